"""codevalue: small decoder-only transformers as value/reward models for code generation."""

from .errors import CodevalueError, DataError, SandboxError
from .labels import Label, LabelConfig, judge, label_rollouts
from .problems import Problem, TestCase, load_problems
from .rollouts import Rollout, extract_code, read_rollouts, truncate_at_stop
from .sandbox import ExecutionResult, Job, Sandbox, SandboxConfig

__version__ = "0.1.0"
__all__ = [
    "CodevalueError", "DataError", "SandboxError", "Label", "LabelConfig", "judge", "label_rollouts",
    "Problem", "TestCase", "load_problems", "Rollout", "extract_code", "read_rollouts", "truncate_at_stop",
    "ExecutionResult", "Job", "Sandbox", "SandboxConfig",
]
