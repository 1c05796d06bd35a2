"""SRank with its ties broken by a learned critic: execution decides between clusters, the critic within them.

    .venv/bin/python benchmarks/srank_tiebreak.py runs/p13/srank.jsonl runs/cv/scores.jsonl -o tiebreak.jsonl
    .venv/bin/codevalue evaluate runs/p13/srank.jsonl tiebreak.jsonl --names SRank tiebreak -o report

SRank gives every rollout of a functional cluster the same score, and often several clusters tie (e.g. all
zero when no program passes a generated test). Rollouts that SRank cannot tell apart are ordered by the
critic's value; SRank's order is never changed. The rule is fixed in advance (no weight to tune): the
learned critic can only add where execution is silent. Output: the SRank file's rollouts with
value = SRank score + 1e-7 x critic value (SRank scores are written to 6 decimals, so distinct ones differ
by at least 1e-6 and keep their order).

`--combine product` is the ensemble instead: value = SRank score x critic value (both in [0, 1], equal
weight in log space, nothing tuned), so a cluster SRank ranks second can win where the critic is surer of it.
"""

from __future__ import annotations

import argparse

from codevalue.jsonl import read_jsonl, write_jsonl

EPSILON = 1e-7  # below the 1e-6 grid of the SRank scores: breaks ties only


def tiebreak(srank_rows: list[dict], critic_rows: list[dict], combine: str = "tiebreak") -> list[dict]:
    critic = {(str(r["problem_id"]), str(r["rollout_id"])): float(r["value"]) for r in critic_rows}
    out = []
    for r in srank_rows:
        key = (str(r["problem_id"]), str(r["rollout_id"]))
        if key not in critic:
            raise SystemExit(f"rollout {key} has an SRank score but no critic score")
        srank = round(float(r["value"]), 6)
        out.append(dict(r, value=srank * critic[key] if combine == "product" else srank + EPSILON * critic[key]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("srank", help="`codevalue codet --method srank` output")
    parser.add_argument("critic", help="scores of a learned critic (e.g. crossval's scores.jsonl)")
    parser.add_argument("-o", "--out", required=True)
    parser.add_argument("--combine", choices=("tiebreak", "product"), default="tiebreak")
    args = parser.parse_args()
    rows = tiebreak([r for _, r in read_jsonl(args.srank)], [r for _, r in read_jsonl(args.critic)], args.combine)
    write_jsonl(args.out, rows)
    print(f"wrote {len(rows)} rollouts -> {args.out}")


if __name__ == "__main__":
    main()
