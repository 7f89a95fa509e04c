"""The one-step latent student and inference (`python -m student.enhance`)."""

from student.model import Student

__all__ = ["Student"]
