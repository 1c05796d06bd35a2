"""LM warm start: corpus selection, blocks, and a short run whose checkpoint becomes a value-model backbone."""

import pytest
import torch
from safetensors.torch import load_file

from codevalue.errors import CodevalueError
from codevalue.model import load_backbone, load_tokenizer
from codevalue.pretrain import corpus_files, pretrain_tiny_lm, token_blocks

pytestmark = pytest.mark.slow  # trains


def test_stdlib_corpus_skips_tests_and_installed_packages():
    files = corpus_files("stdlib")
    assert len(files) > 100 and files == sorted(files)
    assert not any("site-packages" in p.parts or "test" in p.parts for p in files)
    assert any(p.name == "textwrap.py" for p in files)


def test_directory_corpus_and_errors(tmp_path):
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "__pycache__" / "a.py").write_text("y = 2\n")
    (tmp_path / "b.txt").write_text("not python")
    assert corpus_files(str(tmp_path)) == [tmp_path / "pkg" / "a.py"]
    with pytest.raises(CodevalueError, match="is not a directory"):
        corpus_files(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CodevalueError, match="no .py files"):
        corpus_files(str(tmp_path / "empty"))


def test_token_blocks_join_files_with_eos_and_stop_at_max_chars(tmp_path):
    tok = load_tokenizer()
    files = []
    for i in range(3):
        files.append(tmp_path / f"f{i}.py")
        files[-1].write_text(f"def f{i}(x):\n    return x + {i}\n" * 20)
    blocks = token_blocks(tok, files, 16, max_chars=10**9)
    flat = [t for b in blocks for t in b]
    assert all(len(b) == 16 for b in blocks) and flat.count(tok.eos_token_id) >= 2
    one = token_blocks(tok, files, 16, max_chars=len(files[0].read_text()))  # only the first file fits
    assert len(one) < len(blocks) / 2


def test_pretrain_learns_and_loads_as_a_value_backbone(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.py").write_text("def add(a, b):\n    return a + b\n\n" * 200)
    out = tmp_path / "lm"
    r = pretrain_tiny_lm(out, size="1m", corpus=str(corpus), max_steps=30, batch_size=4, block_size=32,
                         lr=3e-3, quiet=True)
    assert r["final_loss"] < 0.5 * r["first_loss"], r  # a repeated snippet is easy to learn
    backbone = load_backbone(str(out), num_labels=1)
    saved = load_file(out / "model.safetensors")
    assert torch.equal(backbone.model.embed_tokens.weight, saved["model.embed_tokens.weight"])
    assert backbone.score.out_features == 1
    with pytest.raises(CodevalueError, match="unknown tiny size"):
        pretrain_tiny_lm(out, size="2m", corpus=str(corpus))
