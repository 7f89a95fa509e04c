"""The one-step latent student, its fast paths and inference (`python -m student.enhance`)."""

from student.fast import fast_variants
from student.model import Student

__all__ = ["Student", "fast_variants"]
