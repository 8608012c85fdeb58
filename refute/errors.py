"""Exception types of refute: every error a caller can act on has a name here."""


class RefuteError(Exception):
    """Base class of every error refute raises on purpose."""


class SubnormalFlushError(RefuteError):
    """The platform flushes subnormals to zero, so it cannot compute canonical results."""


class SpecDomainError(RefuteError, ValueError):
    """An argument lies outside the domain the canonical arithmetic defines (docs/spec.md)."""


class ShapeError(RefuteError, ValueError):
    """Tensor shapes do not fit the operation."""


class VectorFileError(RefuteError):
    """A conformance-vector file is missing, corrupt or of another spec version."""


class CommitmentError(RefuteError, ValueError):
    """A value cannot be committed, or a proof request does not fit the commitment."""


class ProgramError(RefuteError, ValueError):
    """A program (IR) is malformed: bad operand, out-of-bounds index map, wrong arity."""


class ModelLoadError(RefuteError):
    """A model name or checkpoint directory cannot be loaded."""


class ExecutionError(RefuteError):
    """Execution cannot proceed: a bad token, too many positions, a backend that cannot run."""


class TraceFileError(RefuteError):
    """A trace file is corrupt, truncated, or of an unknown format."""


class BackendUnavailableError(RefuteError):
    """The backend asked for cannot run on this machine (missing package, no GPU)."""
