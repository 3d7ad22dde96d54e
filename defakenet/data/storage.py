"""Where a dataset lives: the local disk (or an NFS mount), or a pyarrow filesystem behind a URI (s3://, gs://,
hdfs://, file://).

`open_tree(root)` lists a dataset folder for the layout readers: a local folder through `os`, a URI by one recursive
listing of its pyarrow filesystem (object stores have no folders to walk; a 140k-image bucket prefix is ~140
list requests). Paths come back in the root's own form: plain paths for a local root, percent-encoded URIs for a
URI root, which is what the manifest stores and `Files.read` (the Ray Data decode stage) reads.
"""

from __future__ import annotations

import os
import posixpath
import urllib.parse
from collections.abc import Iterator

import pyarrow.fs as pafs

from defakenet.errors import DataError

_PRUNE = {"__macosx"}


def is_uri(path: str | os.PathLike) -> bool:
    """scheme://… with a scheme of two or more letters (a Windows drive letter is a path)."""
    return len(urllib.parse.urlsplit(str(path)).scheme) > 1 and "://" in str(path)


def _host_in_path(u: urllib.parse.SplitResult, fs_path: str) -> bool:
    """Object stores address files as bucket/key (the URI's host leads the filesystem path), hdfs-like ones as /path
    under scheme://host."""
    return bool(u.netloc) and fs_path.startswith(u.netloc)


class LocalTree:
    """A folder on this machine's file system."""

    def __init__(self, root: str):
        self.root = root

    join = staticmethod(os.path.join)
    name = staticmethod(os.path.basename)
    is_dir = staticmethod(os.path.isdir)
    is_file = staticmethod(os.path.isfile)

    def entries(self, folder: str) -> list[tuple[str, bool]]:
        """(path, is a folder) of folder's visible entries, by name."""
        try:
            names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
        except OSError as e:
            raise DataError(f"{folder}: cannot list ({e.strerror or e})") from None
        return [(p, os.path.isdir(p)) for p in (os.path.join(folder, n) for n in names)]

    def walk(self, folder: str) -> Iterator[tuple[str, list[str], list[str]]]:
        """os.walk (symlinks followed, each real folder once); prune dirnames in place to skip sub-folders."""
        seen = set()
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:  # symlink loop
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames.sort()
            yield dirpath, dirnames, sorted(filenames)

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def read_bytes(self, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


class UriTree:
    """A folder behind a URI, listed once, recursively, through its pyarrow filesystem."""

    def __init__(self, uri: str, expected: str = "a dataset folder"):
        uri = uri.rstrip("/")
        u = urllib.parse.urlsplit(uri)
        if u.query or u.fragment:
            raise DataError(f"{uri}: a dataset URI takes no ?query or #fragment (set the region and credentials in "
                            "the environment, e.g. AWS_REGION)")
        try:
            self.fs, base = pafs.FileSystem.from_uri(uri)
        except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError
            raise DataError(f"{uri}: cannot open ({e})") from None
        base = base.rstrip("/")
        self._prefix = f"{u.scheme}://" + ("" if _host_in_path(u, base) else u.netloc)
        self.root = self._uri(base)
        try:
            kind = self.fs.get_file_info(base).type
            if kind == pafs.FileType.NotFound:
                raise DataError(f"{uri}: no such directory; expected {expected}")
            if kind != pafs.FileType.Directory:
                raise DataError(f"{uri}: is a file; expected {expected}")
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        except OSError as e:
            raise DataError(f"{uri}: cannot list ({e})") from None
        # folder URI -> {name: is a folder}; object stores list no folder objects, so every parent is one
        self._kids: dict[str, dict[str, bool]] = {self.root: {}}
        for info in infos:
            path = info.path.rstrip("/")
            is_dir = info.type == pafs.FileType.Directory
            while path != base and "/" in path:
                parent, name = path.rsplit("/", 1)
                kids = self._kids.setdefault(self._uri(parent), {})
                known = name in kids
                kids[name] = kids.get(name, False) or is_dir
                if known:
                    break
                path, is_dir = parent, True

    def _uri(self, fs_path: str) -> str:
        return self._prefix + urllib.parse.quote(fs_path, safe="/")

    def _fs_path(self, uri: str) -> str:
        return urllib.parse.unquote(uri[len(self._prefix):])

    def join(self, folder: str, *names: str) -> str:
        names = tuple(n for n in (posixpath.normpath(n.strip("/")) for n in names) if n != ".")  # ./train/x.jpg
        return "/".join([folder.rstrip("/"), *(urllib.parse.quote(n, safe="/") for n in names)])

    @staticmethod
    def name(path: str) -> str:
        return urllib.parse.unquote(path.rstrip("/").rsplit("/", 1)[-1])

    def _lookup(self, path: str) -> bool | None:
        """True: a folder, False: a file, None: nothing there."""
        path = path.rstrip("/")
        if path == self.root:
            return True
        parent, _, _ = path.rpartition("/")
        return self._kids.get(parent, {}).get(self.name(path))

    def is_dir(self, path: str) -> bool:
        return self._lookup(path) is True

    def is_file(self, path: str) -> bool:
        return self._lookup(path) is False

    def entries(self, folder: str) -> list[tuple[str, bool]]:
        kids = self._kids.get(folder.rstrip("/"), {})
        return [(self.join(folder, n), d) for n, d in sorted(kids.items()) if not n.startswith(".")]

    def walk(self, folder: str) -> Iterator[tuple[str, list[str], list[str]]]:
        stack = [folder.rstrip("/")]
        while stack:
            d = stack.pop()
            kids = self._kids.get(d, {})
            dirnames = sorted(n for n, is_dir in kids.items() if is_dir)
            yield d, dirnames, sorted(n for n, is_dir in kids.items() if not is_dir)
            stack += [self.join(d, n) for n in reversed(dirnames)]

    def rel(self, path: str) -> str:
        return urllib.parse.unquote(path[len(self.root) + 1:])

    def read_bytes(self, path: str) -> bytes:
        try:
            with self.fs.open_input_stream(self._fs_path(path)) as f:
                return f.read()
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read ({e})") from None


def open_tree(root: str | os.PathLike, expected: str) -> LocalTree | UriTree:
    """The dataset folder at `root` (a path or a URI); DataError naming it and `expected` when it is not a folder."""
    if is_uri(root):
        return UriTree(str(root), expected)
    r = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.exists(r):
        raise DataError(f"{r}: no such directory; expected {expected}")
    if not os.path.isdir(r):
        raise DataError(f"{r}: is a file; expected {expected}")
    return LocalTree(r)


def image_files(tree: LocalTree | UriTree, folder: str, is_image) -> tuple[list[str], int]:
    """Image files under folder (recursive; hidden entries and __MACOSX skipped), and how many files were not."""
    out, skipped = [], 0
    for dirpath, dirnames, filenames in tree.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d.lower() not in _PRUNE]
        for name in filenames:
            if name.startswith(".") or not is_image(name):
                skipped += 1
            else:
                out.append(tree.join(dirpath, name))
    return out, skipped


class Files:
    """Reads whole files by path or URI through pyarrow filesystems, one filesystem per scheme://host."""

    def __init__(self):
        self._local = pafs.LocalFileSystem()
        self._remote: dict[str, tuple[pafs.FileSystem, bool]] = {}

    def _resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        u = urllib.parse.urlsplit(uri)
        if len(u.scheme) <= 1:  # a plain path (or a Windows drive letter): local disk or an NFS mount
            return self._local, os.path.abspath(uri)
        path = urllib.parse.unquote(u.path)  # URIs are percent-encoded, as pyarrow's from_uri assumes
        if u.scheme == "file":
            return self._local, path
        root = f"{u.scheme}://{u.netloc}"
        if root not in self._remote:
            # from_uri builds (and for S3 resolves the region of) one filesystem; later paths reuse it
            fs, first = pafs.FileSystem.from_uri(uri)
            self._remote[root] = (fs, _host_in_path(u, first))
        fs, with_host = self._remote[root]
        return fs, (u.netloc + path) if with_host else path

    def read(self, uri: str) -> bytes:
        try:
            fs, path = self._resolve(uri)
            with fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            raise DataError(f"{uri}: no such file") from None
        except (OSError, ValueError) as e:  # pyarrow raises OSError (and ArrowInvalid, a ValueError) for I/O
            raise DataError(f"{uri}: cannot read ({e})") from None
