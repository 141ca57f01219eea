"""Output paths of the tools, checked before the work.

The tools (``vis_clusters.py``, ``cluster_quality.py``, ``pytorch2onnx.py``,
``publish_model.py``, ``fec_reference_to_mm.py``) call
:func:`check_output_file` or :func:`check_output_dir` first, so that a
read-only folder, a file where a folder should be, or a folder where the
file should be fails in a second with one line naming the path, not after
minutes of work with an ``OSError`` traceback. The check writes (and
removes) a probe file in the nearest existing folder: permission bits, a
read-only mount and a full quota are all found, also when running as root.
Files are then written aside and renamed into place (see
:mod:`fec_mm.checkpoints.atomic_save`), with the user's normal file mode
(:func:`default_file_mode`).
"""
import os
import os.path as osp
import tempfile


class OutputPathError(ValueError):
    """An output path that cannot be written; the message names it."""


def _nearest_existing(path: str) -> str:
    path = osp.abspath(path)
    while not osp.lexists(path):
        path = osp.dirname(path)
    return path


def _check_can_create_in(folder_of: str, what: str, path: str) -> None:
    """Fail unless a file can be created in ``folder_of`` (or, where it does
    not exist yet, in the nearest existing folder above it)."""
    existing = _nearest_existing(folder_of)
    if not osp.isdir(existing):
        raise OutputPathError(f'{what} {path}: {existing} is a file, not a folder')
    try:
        fd, probe = tempfile.mkstemp(prefix='.fec_mm-write-check-', dir=existing)
    except OSError as err:
        raise OutputPathError(f'{what} {path}: cannot write in {existing} '
                              f'({err.strerror or err})') from None
    os.close(fd)
    os.remove(probe)


def check_output_file(path: str, what: str = 'output') -> bool:
    """Check that ``path`` can be written, before any work is done.

    Args:
        path (str): The file the tool will write (its folder may not exist
            yet; the tool creates it).
        what (str): How the error names the path, e.g. ``'--out'``.

    Returns:
        bool: Whether a file is already there (the tool will replace it and
        says so).

    Raises:
        OutputPathError: ``path`` is a folder, a folder on its way is a file,
            or the folder cannot be written (read-only, no permission).
    """
    if osp.isdir(path):
        raise OutputPathError(f'{what} {path}: is a folder, not a file name')
    _check_can_create_in(osp.dirname(osp.abspath(path)), what, path)
    return osp.lexists(path)


def check_output_dir(path: str, what: str = 'output folder') -> None:
    """Check that files can be written into the folder ``path`` (created
    later by the tool if missing), before any work is done.

    Raises:
        OutputPathError: ``path`` or a folder on its way is a file, or it
            cannot be written.
    """
    if osp.lexists(path) and not osp.isdir(path):
        raise OutputPathError(f'{what} {path}: is a file, not a folder')
    _check_can_create_in(path, what, path)


def default_file_mode() -> int:
    """The mode a plain ``open(path, 'w')`` gives a new file: 0o666 less the
    umask (``tempfile.mkstemp`` gives 0o600 instead)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
