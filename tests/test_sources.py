"""Downloads and archives, for real: an HTTP server on 127.0.0.1 serving archives of generated JPEGs."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from abcd.data.sources import SourceError, SourceParams, choose_set, download, list_files, open_source
from abcd.stages.prepare import main as prepare_main
from tests.conftest import CLASSES, make_image
from tests.pipeline_utils import photo_source, write_sources

PER_CLASS = 3


class Server(http.server.ThreadingHTTPServer):
    """Serves ``files`` (path -> bytes); ``plan`` (path -> list of "500" / "cut" / "ok") is
    consumed one entry per request, then every request succeeds."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.plan: dict[str, list[str]] = {}
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        steps = self.server.plan.get(self.path, [])
        step = steps.pop(0) if steps else "ok"
        if step == "500":
            self.send_error(500, "Internal Server Error")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if step == "cut":
            # Half the promised bytes, then the connection goes away.
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    # shutdown() waits for the loop's next poll: 0.5 s by default, at the end of every test.
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _photos(tmp: Path) -> dict[str, bytes]:
    """PER_CLASS generated JPEGs per class (distinct pictures, so prepare keeps them all), as member name -> bytes."""
    out = {}
    for c, label in enumerate(CLASSES):
        for i in range(PER_CLASS):
            jpeg = make_image(tmp / label / f"{label}_{i}.jpg", seed=1000 + 10 * c + i, size=(64 + 8 * i, 48))
            out[f"pets/{label}/{jpeg.name}"] = jpeg.read_bytes()
    return out


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    photos = _photos(tmp_path_factory.mktemp("photos"))
    assert len(photos) == PER_CLASS * len(CLASSES) and all(data[:3] == b"\xff\xd8\xff" for data in photos.values())
    return {"/pets.zip": make_zip(photos), "/pets.tar.gz": make_tar(photos)}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _source(url: str, sha256: str | None = None, name: str = "pets"):
    from abcd.data.sources import SourceParams

    return SourceParams(name=name, location=url, sha256=sha256, folders={c: [f"pets/{c}"] for c in CLASSES}, take="all")


@pytest.mark.parametrize("path", ["/pets.zip", "/pets.tar.gz"])
def test_download_extract_and_list(
    server: Server, archives: dict[str, bytes], tmp_path: Path, path: str, capsys
) -> None:
    server.files.update(archives)
    opened = open_source(_source(server.url + path), tmp_path, tmp_path / "cache", backoff=0)
    assert opened.sha256 == _sha(archives[path]) and opened.kind == "url"
    assert f"sha256 of {server.url + path} is {opened.sha256}" in capsys.readouterr().err  # recorded on first use
    files = list(list_files(opened))
    assert len(files) == PER_CLASS * len(CLASSES)
    assert {label for label, _, _, _ in files} == set(CLASSES)
    label, key, rel, file = files[0]
    assert key == f"pets/pets/{label}/{file.name}" and rel == file.name and file.is_file()
    # The second use reads the cache: no new request, and with the pinned sha256 it is checked.
    again = open_source(_source(server.url + path, opened.sha256), tmp_path, tmp_path / "cache")
    assert again.root == opened.root and server.requests == [path]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.is_file()) == [f"pets-{path[1:]}"]


def test_server_error_then_success_is_retried(server: Server, archives: dict[str, bytes], tmp_path: Path) -> None:
    server.files.update(archives)
    server.plan["/pets.zip"] = ["500", "500"]
    dest = tmp_path / "pets.zip"
    sha = download(server.url + "/pets.zip", dest, _sha(archives["/pets.zip"]), retries=2, backoff=0.001)
    assert sha == _sha(archives["/pets.zip"]) and dest.read_bytes() == archives["/pets.zip"]
    assert server.requests == ["/pets.zip"] * 3


def test_connection_cut_mid_file_never_leaves_a_file(
    server: Server, archives: dict[str, bytes], tmp_path: Path
) -> None:
    server.files.update(archives)
    server.plan["/pets.zip"] = ["cut", "cut"]
    dest = tmp_path / "cache" / "pets.zip"
    with pytest.raises(SourceError, match=r"download failed after 2 attempts \(connection closed after \d+ of \d+"):
        download(server.url + "/pets.zip", dest, None, retries=1, backoff=0.001, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []  # neither the file nor a part file
    # The next run starts afresh: one more cut, then the whole file; the result is complete.
    server.plan["/pets.zip"] = ["cut"]
    sha = download(server.url + "/pets.zip", dest, None, retries=1, backoff=0.001, progress=False)
    assert dest.read_bytes() == archives["/pets.zip"] and sha == _sha(archives["/pets.zip"])
    assert list((tmp_path / "cache").iterdir()) == [dest]


def test_checksum_mismatch_is_a_clear_error_and_keeps_nothing(
    server: Server, archives: dict[str, bytes], tmp_path: Path
) -> None:
    server.files.update(archives)
    wrong = "0" * 64
    cache = tmp_path / "cache"
    with pytest.raises(
        SourceError, match=rf"pets.zip: sha256 mismatch: expected {wrong}, got {_sha(archives['/pets.zip'])}"
    ):
        open_source(_source(server.url + "/pets.zip", wrong), tmp_path, cache, backoff=0)
    assert list(cache.iterdir()) == []
    assert len(server.requests) == 1  # a mismatch is not retried: the server sent what it has


def test_client_errors_are_not_retried(server: Server, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"missing\.zip: HTTP 404"):
        download(server.url + "/missing.zip", tmp_path / "m.zip", None, retries=3, backoff=0.001)
    assert server.requests == ["/missing.zip"]
    assert list(tmp_path.iterdir()) == []


def test_local_archive_source_and_unsafe_members(archives: dict[str, bytes], tmp_path: Path) -> None:
    local = tmp_path / "pets.tar.gz"
    local.write_bytes(archives["/pets.tar.gz"])
    opened = open_source(_source(str(local)), tmp_path, tmp_path / "cache")
    assert opened.kind == "archive" and len(list(list_files(opened))) == PER_CLASS * len(CLASSES)
    with pytest.raises(SourceError, match=r"has sha256 [0-9a-f]{64}, expected 1{64}"):
        open_source(_source(str(local), "1" * 64), tmp_path, tmp_path / "cache")

    evil = tmp_path / "evil.zip"
    evil.write_bytes(make_zip({"../outside.jpg": b"x"}))
    with pytest.raises(SourceError, match=r"member '../outside.jpg' would be written outside"):
        open_source(_source(str(evil)), tmp_path, tmp_path / "cache")
    assert not (tmp_path / "outside.jpg").exists()


def test_missing_folder_names_the_source_and_what_is_there(archives: dict[str, bytes], tmp_path: Path) -> None:
    local = tmp_path / "pets.zip"
    local.write_bytes(archives["/pets.zip"])
    from abcd.data.sources import SourceParams

    source = SourceParams(
        name="pets", location=str(local), sha256=None, folders={"ants": ["hymenoptera_data/train/ants"]}, take="all"
    )
    opened = open_source(source, tmp_path, tmp_path / "cache")
    with pytest.raises(
        SourceError, match=r"folder 'hymenoptera_data/train/ants' for class ants not found .*holds: pets"
    ):
        list(list_files(opened))


def test_auto_picks_the_first_available_set(tmp_path: Path) -> None:
    sets = {
        "mirror": [_source(str(tmp_path / "absent"))],
        "download": [_source("https://example.invalid/pets.zip")],
    }
    classes = list(sets["mirror"][0].folders)
    assert choose_set("auto", sets, classes, tmp_path, {}) == (
        "download",
        "prepare.use=auto: first set whose local paths exist",
    )
    (tmp_path / "absent").mkdir()
    assert choose_set("auto", sets, classes, tmp_path, {})[0] == "mirror"
    assert choose_set("auto", sets, classes, tmp_path, {"ABCD_DATA": "download"}) == (
        "download",
        "$ABCD_DATA=download",
    )
    with pytest.raises(SourceError, match=r"\$ABCD_DATA is 'mine'; choose one of auto, mirror, download"):
        choose_set("auto", sets, classes, tmp_path, {"ABCD_DATA": "mine"})


def test_only_the_chosen_set_must_be_keyed_by_the_classes(tmp_path: Path) -> None:
    """Renamed classes in a set of one's own leave the shipped sets, keyed by ants..dogs, untouched."""
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mine").mkdir()
    mine = SourceParams(
        name="mine", location=str(tmp_path / "mine"), sha256=None, take="all",
        folders={"fourmis": ["fourmis"], "abeilles": ["abeilles"], "chats": ["chats"]},
    )  # fmt: skip
    sets = {"mirror": [_source(str(tmp_path / "mirror"))], "mine": [mine]}
    french = ["fourmis", "abeilles", "chats"]
    assert choose_set("mine", sets, french, tmp_path, {}) == ("mine", "prepare.use=mine")
    # auto passes over the set keyed by other classes, and says so when none is left
    assert choose_set("auto", sets, french, tmp_path, {})[0] == "mine"
    with pytest.raises(SourceError, match=r"serves classes wolves .*mirror: keyed by other classes; mine: keyed"):
        choose_set("auto", sets, ["wolves"], tmp_path, {})
    with pytest.raises(SourceError, match=r"'sets.mirror\[0\].folders' must be keyed by classes \(fourmis, abeilles, "
                       r"chats\), not .* \(the set chosen by prepare.use=mirror\)"):  # fmt: skip
        choose_set("mirror", sets, french, tmp_path, {})
    with pytest.raises(SourceError, match=r"no source has folders for class\(es\) dogs"):
        choose_set("mine", sets, [*french, "dogs"], tmp_path, {})


def test_prepare_downloads_the_archive_set_when_told_to(
    server: Server, archives: dict[str, bytes], repo: Path, tmp_path: Path, monkeypatch
) -> None:
    """The whole stage on a URL source chosen by ABCD_DATA; the sha256 lands in the data report."""
    server.files.update(archives)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    download = {**photo_source(Path("-"), name="pets"), "location": server.url + "/pets.zip"}
    download["folders"] = {c: [f"pets/{c}"] for c in CLASSES}
    sets = {"mirror": [photo_source(tmp_path / "no-such-mirror", name="mirror")], "download": [download]}
    write_sources(tmp_path / "sources.yaml", sets)
    params["prepare"]["split"] = {"train": 1, "val": 1, "test": "rest"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ABCD_DATA", "download")
    prepare_main(
        [
            "--params",
            "params.yaml",
            "--sources",
            "sources.yaml",
            "--out",
            "data/prepared",
            "--report",
            "r.json",
        ]
    )
    report = json.loads(Path("r.json").read_text())
    assert report["source_set"] == "download"
    assert report["sources"] == [
        {"name": "pets", "location": server.url + "/pets.zip", "kind": "url", "sha256": _sha(archives["/pets.zip"])}
    ]
    assert report["totals"] == {"found": 12, "kept": 12, "skipped": 0, "train": 4, "val": 4, "test": 4}
    assert (tmp_path / "data" / "downloads" / "pets-pets.zip").is_file()  # the default cache, under the repo
