"""Exception types of the contracts side (build, artifacts, chain connection)."""

from refute.errors import RefuteError


class ContractBuildError(RefuteError):
    """The Solidity build failed: compiler missing, wrong version, or compilation errors."""


class StaleArtifactsError(ContractBuildError):
    """The committed artifacts differ from what the pinned compiler produces from the sources."""


class ArtifactNotFoundError(RefuteError, LookupError):
    """No compiled artifact of that name ships with the package."""


class ChainConnectionError(RefuteError, ConnectionError):
    """A JSON-RPC node could not be reached or is not usable."""


class DeploymentError(RefuteError):
    """No usable deployment: no contract at the address given, or not the expected one."""
