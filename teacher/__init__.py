"""Stage one: teachers (`flow`, `hypir`) and their training. Other stages use `load_teacher`."""

from teacher.models import load_teacher

__all__ = ["load_teacher"]
