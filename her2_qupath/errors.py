"""One exception hierarchy for the whole product.

Every error a user can cause derives from :class:`Her2Error`, and most also
derive from the matching builtin (``SlideNotFound`` is a ``FileNotFoundError``)
so callers can catch either. Messages say what is wrong *and* how to fix it;
the CLI prints them on one line and exits with :attr:`Her2Error.exit_code`.
Causes are chained with ``raise ... from err``.
"""

from __future__ import annotations

__all__ = [
    "Her2Error",
    "UserInputError",
    "SlideNotFound",
    "SlideFormatError",
    "MPPMissing",
    "GeoJSONError",
    "ModelError",
    "RegistrationError",
    "ProjectError",
    "ProjectLocked",
    "QuPathUnavailable",
    "OutputExists",
    "AccessDenied",
    "JobCancelled",
]


class Her2Error(Exception):
    """Base class of every error this product raises on purpose."""

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class UserInputError(Her2Error, ValueError):
    """A parameter or input file is not usable as given."""


class SlideNotFound(Her2Error, FileNotFoundError):
    """The slide path does not exist or is not a file."""


class SlideFormatError(Her2Error, ValueError):
    """The file exists but cannot be read as a slide image."""


class MPPMissing(Her2Error, ValueError):
    """The image carries no pixel size and none was given (``--mpp``)."""


class GeoJSONError(Her2Error, ValueError):
    """GeoJSON input is malformed or breaks QuPath's rules."""


class ModelError(Her2Error, ValueError):
    """A model directory is missing, incomplete or inconsistent."""


class RegistrationError(Her2Error, RuntimeError):
    """Two slides could not be aligned with confidence."""


class ProjectError(Her2Error):
    """A QuPath project cannot be read or written."""


class ProjectLocked(ProjectError):
    """The project looks open in QuPath; writing it is refused."""


class QuPathUnavailable(Her2Error, RuntimeError):
    """paquo needs a QuPath installation (``PAQUO_QUPATH_DIR``) for this."""


class OutputExists(Her2Error, FileExistsError):
    """An output would overwrite something the user did not ask to replace."""


class AccessDenied(Her2Error, PermissionError):
    """A path lies outside the directories the server may read (``--image-root``)."""


class JobCancelled(Her2Error):
    """A scoring run was cancelled before it finished (nothing was written)."""

    exit_code = 130
