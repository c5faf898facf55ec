"""Write output folders atomically: build them beside the target, then rename.

A failure part-way leaves the user's existing output untouched and no
half-written folder behind.
"""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

from iann.errors import IannError


def check_new_folder(path, overwrite, what="Output folder"):
    """Refuse an existing path without overwrite, or a parent that is missing."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise IannError(
            _("{} <{}>: folder <{}> does not exist").format(what, path, parent)
        )
    if os.path.exists(path) and not overwrite:
        raise IannError(
            _("{} <{}> exists; use --overwrite to replace it").format(what, path)
        )
    return path


def check_new_file(path, overwrite, what="Output file"):
    """Refuse an existing file without overwrite, or a parent that is missing."""
    path = check_new_folder(path, overwrite, what)
    if os.path.isdir(path):
        raise IannError(_("{} <{}> is a folder").format(what, path))
    return path


@contextmanager
def atomic_folder(path, overwrite):
    """Yield a temporary folder that replaces `path` when the block succeeds."""
    path = check_new_folder(path, overwrite)
    parent, name = os.path.split(path)
    tmp = tempfile.mkdtemp(prefix=".{}.tmp-".format(name), dir=parent)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(path):
        old = tempfile.mkdtemp(prefix=".{}.old-".format(name), dir=parent)
        os.rename(path, os.path.join(old, name))
    os.rename(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def read_metadata_file(folder, name, form, version, what):
    """The JSON metadata file `name` of a folder of format `form`.

    `what` names the folder's kind in messages ("a dataset written by
    i.ann.patches"). A file of another format, or of a newer version than
    this i.ann reads, is refused: read with today's rules, it would be
    misread.
    """
    path = os.path.join(folder, name)
    try:
        with open(path) as f:
            metadata = json.load(f)
    except (OSError, ValueError) as error:
        raise IannError(_("<{}> is not {} ({})").format(folder, what, error))
    if not isinstance(metadata, dict) or metadata.get("format") != form:
        raise IannError(_("<{}> is not {}").format(folder, what))
    found = metadata.get("format_version")
    if not isinstance(found, int) or not 1 <= found <= version:
        raise IannError(
            _(
                "<{}> has format_version {}, which this version of i.ann "
                "cannot read (it reads versions 1 to {}); update i.ann"
            ).format(path, found, version)
        )
    return metadata


@dataclass(kw_only=True)
class JsonMetadata:
    """What the metadata dataclasses share: the format's header, and their
    JSON object both ways.

    A subclass is a dataclass whose fields are the JSON's keys in the
    JSON's order (keyword-only, so that defaults need not come last); it
    gives `format` and `format_version` their defaults, which keeps them
    first. Fields in LEFT_OUT_WHEN_NONE are not written when None. Keys this
    version does not know (written by hand, or by a later version of the
    same format_version) are kept in the field `extra` and written back last.
    """

    format: str
    format_version: int
    created: str = None
    extra: dict = field(default_factory=dict, repr=False)

    LEFT_OUT_WHEN_NONE = ()

    @classmethod
    def from_json(cls, data):
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in data.items() if k in known},
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_json(self):
        data = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "extra" and not (
                f.name in self.LEFT_OUT_WHEN_NONE and value is None
            ):
                data[f.name] = value
        data.update(self.extra)
        return data
