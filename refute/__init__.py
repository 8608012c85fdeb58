"""refute: optimistic fraud proofs for machine-learning inference."""

from refute.errors import RefuteError

__all__ = ["RefuteError"]
