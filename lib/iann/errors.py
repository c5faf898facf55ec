"""The error the library raises for bad input; modules turn it into gs.fatal."""


class IannError(Exception):
    """Bad input or state, with a message meant for the GRASS user."""


class DiskFull(IannError):
    """No space left where a job writes: the work done so far is kept."""


class ClusterLost(IannError):
    """The connection to the Dask scheduler was lost mid-job: the work done
    so far is kept."""
