"""One exception family so the CLI can turn user mistakes into one line and exit 2."""


class TaskIndexError(ValueError):
    """Bad input from the user: the message says what is wrong and how to fix it.

    `cli` is the same message for the command line, where the fix is a flag or a command rather than a
    Python argument; it defaults to the message itself.
    """

    def __init__(self, message: str = "", cli: str | None = None):
        super().__init__(message)
        self.cli = message if cli is None else cli


class TaskError(TaskIndexError):
    """A task's images or labels cannot be used."""


class ProbeError(TaskIndexError):
    """A probe name or weights file is unknown or does not fit."""


class IncompatibleEmbeddingsError(TaskIndexError):
    """Embeddings from different probes, methods or layouts were mixed."""


class EmbeddingFileError(TaskIndexError):
    """A file is not a readable taskindex embedding."""


class IndexUsageError(TaskIndexError):
    """The directory is not an index, or cannot be used as asked (read-only, wrong space, bad name)."""


class IndexCorruptError(TaskIndexError):
    """A file of the committed version is missing, truncated or altered."""


class IndexLockedError(TaskIndexError):
    """Another process is writing to the index."""


class ManifestError(TaskIndexError):
    """A rebuild manifest cannot be used: the message names the file and the line."""


class CommitError(TaskIndexError):
    """A commit could not be written (a full disk, a failed fsync); `committed` says whether it landed anyway."""

    def __init__(self, message: str, committed: bool = False):
        super().__init__(message)
        self.committed = committed


class VersionGoneError(TaskIndexError):
    """The version a handle reads was removed from disk (by a compact that could not see this reader)."""
