"""Experiment storage whose file copies are hard links: checkpoints reach storage for free.

Tune persists every reported checkpoint by copying its folder into the trial's storage
folder (`pyarrow.fs.copy_files`), which at InfiniteTalk's dims costs a trial much of its
time (docs/performance.md). When source and destination filesystems are equal,
`copy_files` calls the filesystem's own `copy_file`; this one is the local filesystem with
`copy_file` as a hard link, so a trial writes its checkpoint once, into a scratch folder
inside the experiment, and Tune's copy costs nothing. Where a link cannot be made (another
filesystem), it copies.
"""

from __future__ import annotations

import errno
import os
import shutil

import pyarrow.fs as pafs

LINK_FAILURES = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES)


class LinkingLocalHandler(pafs.FileSystemHandler):
    """pyarrow's local filesystem, except that copying a file links it."""

    def __init__(self):
        self.local = pafs.LocalFileSystem()

    def __eq__(self, other):
        return isinstance(other, LinkingLocalHandler)

    def __ne__(self, other):
        return not self == other

    def __reduce__(self):  # Tune ships the filesystem to every trial process
        return LinkingLocalHandler, ()

    def copy_file(self, src, dest):
        try:
            if os.path.lexists(dest):
                os.unlink(dest)
            os.link(src, dest)
        except OSError as exc:
            if exc.errno not in LINK_FAILURES:
                raise
            shutil.copyfile(src, dest)

    def get_type_name(self):
        return "tune-adapter-linking-local"

    def normalize_path(self, path):
        return self.local.normalize_path(path)

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("refusing to empty the root folder")

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self.local.move(src, dest)

    def open_input_stream(self, path):
        return self.local.open_input_stream(path)

    def open_input_file(self, path):
        return self.local.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.local.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.local.open_append_stream(path, metadata=metadata)


def linking_filesystem() -> pafs.PyFileSystem:
    return pafs.PyFileSystem(LinkingLocalHandler())
