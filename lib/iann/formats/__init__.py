"""Formats: the patch dataset and the model bundle as folders on disk.

Their file names, format names and versions, one reader and one writer of
each metadata file (a newer or unknown version is refused), checksums and
folders written atomically. Imports only iann.errors: everything else
reads and writes these folders through here.
"""
