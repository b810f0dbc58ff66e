"""The station's update agent (ARCHITECTURE §7): pull, verify, canary, swap, health-check, roll back.

State directory (`--state DIR`):

    trusted_root.json        the TUF root the device was provisioned with (its trust anchor)
    tuf/                     python-tuf's verified metadata cache
    staging/<v>-<sha>/       downloads in progress (kept across runs: resumed, not restarted)
    slots/<v>-<sha>-<id>/    installed packages, each complete and verified (install.json)
    active -> slots/…        the model predictions use; always a complete, verified package
    previous -> slots/…      the one before
    journal.json             present only while a swap is not committed
    state.json, status.json  device id and refused releases; the last status report

An install never touches `active` until the new package is downloaded, checked against signed
metadata and has passed its canary in its own slot; the swap is two symlink renames (previous
first, then active), each atomic and fsynced, so at every instant `active` names a complete
package. After the swap the health check (load, canary, latency within the manifest's budget)
commits the install or rolls it back. A journal written before the swap lets a restarted agent
finish or undo an install that was killed half-way.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from skyedge.core import contract, inference, inputs
from skyedge.core.files import atomic_write, fsync_dir
from skyedge.device import AGENT_VERSION
from skyedge.device.fetch import DownloadFailed, EndlessData, Fetcher, Missing, Unreachable, join
from skyedge.release import container
from skyedge.release import manifest as mf
from skyedge.release.registry import delta_key, in_cohort
from skyedge.release.tuf import METADATA_PREFIX, object_key

KILL_ENV_VAR = "SKYEDGE_DEVICE_TEST_KILL_AT"  # test hook: SIGKILL the agent at this step
STEPS = ("metadata", "download-partial", "downloaded", "canary", "staged", "journal", "previous", "active", "health", "committed")
INSTALL_FILE = "install.json"
DOWNLOAD_ATTEMPTS = 3
TRANSIENT = frozenset({"store-unreachable", "download-interrupted", "corrupted-download", "missing-object", "unexpected"})


class Refused(RuntimeError):
    """The agent will not install what the store offers; `reason` is the reported category."""

    def __init__(self, reason: str, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.permanent = permanent  # True: never retry this release (canary or health failed)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# In-process crash hook for simulated fleets (skyedge fleet simulate): called at every step; it
# raises to abandon the agent there, as a power cut would, leaving only what is on disk.
crash_hook: Callable[[str], None] | None = None


def _checkpoint(step: str) -> None:
    """Crash-test hooks: with SKYEDGE_DEVICE_TEST_KILL_AT=<step>, die here as a power cut would."""
    if os.environ.get(KILL_ENV_VAR) == step:
        os.kill(os.getpid(), signal.SIGKILL)
    if crash_hook is not None:
        crash_hook(step)


def _write_json(path: Path, document: dict[str, Any]) -> None:
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in str(text).split("+")[0].split("."))


def base_url_for(store_url: str, endpoint_url: str | None = None) -> str:
    """The URL a device reads the store from: s3://B/P -> ENDPOINT/B/P (path-style), http(s) and
    local paths as they are."""
    parsed = urlparse(str(store_url))
    if parsed.scheme == "s3":
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or "https://s3.amazonaws.com"
        return f"{endpoint.rstrip('/')}/{parsed.netloc}{parsed.path}".rstrip("/")
    if parsed.scheme == "file":
        return parsed.path
    return str(store_url).rstrip("/")


# --- canary and health -------------------------------------------------------------------------


def http_refusal(exc: Exception, base_url: str) -> Exception:
    """Name what an HTTP error on the metadata means, and what to do about it."""
    status, text = getattr(exc, "status_code", None), str(exc)
    if status == 403 or "AccessDenied" in text:
        return Refused(
            "access-denied",
            f"the store refused access ({text}): the bucket must allow anonymous GetObject on this prefix (README: the bucket policy devices need), "
            "or give the device credentials, or a --base-url to a mirror that serves it",
        )
    if status == 404 and "NoSuchBucket" in text:
        return Refused("store-not-found", f"no such bucket ({text}): check --store / --base-url ({base_url})")
    if status == 404:
        return Refused("not-published", f"nothing is published at {base_url}: no TUF metadata there ({text}); publish with --keys, or check the prefix")
    return Unreachable(f"store answered HTTP {status}: {text}")


def attended_canary_feed(package_dir: Path, document: dict[str, Any], feed: dict[str, np.ndarray], frames: np.ndarray | None) -> dict[str, np.ndarray]:
    """The canary's image input rebuilt the way predict builds it behind attention: the whole
    frames through attention.onnx, their boxes, the crops. A mismatch in any of those steps on
    this station then fails the canary, not a forecast."""
    attention = document["attention"]
    if frames is None:
        raise Refused("canary-mismatch", f"{document['canary'].get('file', 'canary.npz')}: no {mf.CANARY_FRAMES!r} array, but the manifest has an attention section", permanent=True)
    try:
        session = inference.session(package_dir / attention["file"])
        image = inputs.attended_image_input(session, frames, feed[contract.INPUT_IMAGE_PRESENT], attention, document["preprocessing"]["image"])
    except (inference.ModelFileError, KeyError, ValueError) as exc:
        raise Refused("canary-mismatch", f"attention path does not run: {exc}", permanent=True) from None
    return {**feed, contract.INPUT_IMAGE: image}


def run_canary(package_dir: Path, document: dict[str, Any]) -> Any:
    """Load the model and check the manifest's canary outputs; returns the ORT session."""
    try:
        model = inference.session(package_dir / mf.MODEL_FILE)
    except inference.ModelFileError as exc:
        raise Refused("canary-mismatch", f"model does not load: {exc}", permanent=True) from exc
    canary = document.get("canary") or {}
    expected = canary.get("expected") or {}
    if not expected:
        raise Refused("canary-mismatch", "manifest has no canary expected outputs", permanent=True)
    atol = float(canary.get("atol", 1e-3))
    with np.load(package_dir / canary.get("file", "canary.npz")) as data:
        wanted = {i.name for i in model.get_inputs()}
        feed = {name: data[name] for name in data.files if name in wanted}
        frames = data[mf.CANARY_FRAMES] if mf.CANARY_FRAMES in data.files else None
    if document.get("attention") is not None:
        feed = attended_canary_feed(package_dir, document, feed, frames)
    names = list(expected)
    try:
        outputs = model.run(names, feed)
    except Exception as exc:  # ORT's own error types: missing input, wrong shape
        raise Refused("canary-mismatch", f"canary inputs do not run: {exc}", permanent=True) from None
    for name, got in zip(names, outputs):
        want = np.asarray(expected[name], dtype=np.float64)
        if got.shape != want.shape or not np.allclose(got, want, atol=atol, rtol=0, equal_nan=True):
            worst = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
            raise Refused("canary-mismatch", f"canary output {name} differs from the manifest by {worst:.3g} (atol {atol})", permanent=True)
    return model, feed


def health_check(package_dir: Path, runs: int = 5) -> dict[str, Any]:
    """Load, canary, and batch-1 latency (median of `runs`) within the manifest's latency_budget_ms."""
    document = json.loads((package_dir / mf.MANIFEST_FILE).read_text())
    model, feed = run_canary(package_dir, document)
    one = {name: value[:1] for name, value in feed.items()}
    latency = inference.latency_summary(inference.timed_runs(model, one, runs, warmup=1))["latency_ms_p50"]
    budget = document.get("latency_budget_ms")
    if budget is not None and latency > float(budget):
        raise Refused("health-check-failed", f"latency {latency:.3f} ms exceeds the manifest's budget of {budget} ms", permanent=True)
    return {"latency_ms": latency, "budget_ms": budget}


def verify_slot(slot: Path) -> dict[str, Any]:
    """The manifest of an installed slot whose files still match what was verified at install."""
    record = json.loads((slot / INSTALL_FILE).read_text())
    for name, (length, sha) in record["files"].items():
        path = slot / name
        if not path.is_file() or path.stat().st_size != length or mf.sha256_file(path) != sha:
            raise mf.PackageError(f"{path}: does not match the verified install")
    return json.loads((slot / mf.MANIFEST_FILE).read_text())


# --- the agent ---------------------------------------------------------------------------------


class Agent:
    """One device's agent; `pull()` is one check-and-install, `run()` loops it."""

    def __init__(
        self,
        state_dir: Path,
        base_url: str,
        channel: str = "production",
        device_id: str | None = None,
        trusted_root: Path | None = None,
        status_store: Any = None,
        fetcher: Fetcher | None = None,
        status_sections: Callable[[], dict[str, Any]] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.dir = Path(state_dir)
        # What the station adds to each status report (skyedge.device.station: field skill,
        # drift, uplink), and the time it reports (a simulated fleet runs on simulated hours).
        self.status_sections = status_sections
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.base_url = base_url
        self.channel = channel
        self.status_store = status_store
        self.fetcher = fetcher or Fetcher(checkpoint=_checkpoint)
        self.retries = 0  # downloads restarted after a hash mismatch
        self.model_source: dict[str, Any] | None = None  # how the last install got model.onnx (delta, container, full)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = self._load_state()
        self.device_id = device_id or self.state.get("device_id") or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        anchor = self.dir / "trusted_root.json"
        if not anchor.exists():
            if trusted_root is None:
                raise ValueError(f"{self.dir} is not provisioned: pass --trusted-root KEYS/root.json on the first pull")
            data = Path(trusted_root).read_bytes()
            tmp = anchor.with_name(".trusted_root.json.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, anchor)
        if self.state.get("device_id") != self.device_id:
            self.state["device_id"] = self.device_id
            self._save_state()

    # --- local state ---------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        path = self.dir / "state.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {"refused": {}}

    def _save_state(self) -> None:
        _write_json(self.dir / "state.json", self.state)

    def slot(self, name: str = "active") -> Path | None:
        link = self.dir / name
        return link.resolve() if link.is_symlink() and link.resolve().is_dir() else None

    def _set_link(self, name: str, target: Path | None) -> None:
        """Point DIR/name at `target` (or remove it) with one atomic rename, then fsync DIR."""
        link = self.dir / name
        if target is None:
            link.unlink(missing_ok=True)
        else:
            tmp = self.dir / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
            os.symlink(os.path.relpath(target, self.dir), tmp)
            os.replace(tmp, link)
        fsync_dir(self.dir)

    def active_manifest(self) -> dict[str, Any] | None:
        slot = self.slot("active")
        if slot is None:
            return None
        return json.loads((slot / mf.MANIFEST_FILE).read_text())

    # --- recovery --------------------------------------------------------------------------

    def recover(self) -> None:
        """Finish or undo an install a crash interrupted, repair a corrupt active slot, tidy up."""
        journal_path = self.dir / "journal.json"
        if journal_path.exists():
            journal = json.loads(journal_path.read_text())
            new = self.dir / journal["new"]
            if self.slot("active") == new.resolve():
                try:
                    health_check(new)
                    journal_path.unlink()  # the health check passed: commit
                except Exception as exc:
                    self._undo(journal)
                    self._mark_refused(journal["release"], "health-check-failed", str(exc))
            else:
                self._undo(journal)
        # A corrupt active slot (disk fault, tampering) falls back to previous.
        active = self.slot("active")
        if active is not None:
            try:
                verify_slot(active)
            except (OSError, ValueError, KeyError):
                previous = self.slot("previous")
                self._set_link("active", previous)
                self._set_link("previous", None)
        keep = {self.slot("active"), self.slot("previous")}
        slots = self.dir / "slots"
        if slots.is_dir():
            for path in slots.iterdir():
                if path.resolve() not in keep:
                    shutil.rmtree(path, ignore_errors=True)

    def _undo(self, journal: dict[str, Any]) -> None:
        old_active, old_previous = journal.get("old_active"), journal.get("old_previous")
        self._set_link("active", self.dir / old_active if old_active else None)
        self._set_link("previous", self.dir / old_previous if old_previous else None)
        shutil.rmtree(self.dir / journal["new"], ignore_errors=True)
        (self.dir / "journal.json").unlink(missing_ok=True)

    def _mark_refused(self, release: str, reason: str, message: str) -> None:
        self.state.setdefault("refused", {})[release] = {"reason": reason, "error": message, "time": _now()}
        self._save_state()

    # --- pull ----------------------------------------------------------------------------

    def pull(self) -> dict[str, Any]:
        """Check the channel once; install a newer release if there is one. Returns the status."""
        status: dict[str, Any] = {"state": "up-to-date", "reason": None, "last_error": None, "target_version": None}
        try:
            self.recover()
            status.update(self._pull())
        except Refused as exc:
            status.update(state="refused", reason=exc.reason, last_error=str(exc))
        except DownloadFailed as exc:
            status.update(state="error", reason=exc.reason, last_error=str(exc))
        except OSError as exc:
            status.update(state="error", reason="local-io", last_error=str(exc))
        except Exception as exc:  # noqa: BLE001 - whatever breaks, the device reports it and tries again later
            status.update(state="error", reason="unexpected", last_error=f"{type(exc).__name__}: {exc}")
        return self.report(status)

    def _updater(self):
        from tuf.ngclient import Updater, UpdaterConfig

        return Updater(
            metadata_dir=str(self.dir / "tuf"),
            metadata_base_url=join(self.base_url, METADATA_PREFIX),
            target_base_url=self.base_url,
            fetcher=self.fetcher,
            # Models are immutable at versioned keys: no hash-prefixed copies to fetch.
            config=UpdaterConfig(prefix_targets_with_hash=False),
            bootstrap=(self.dir / "trusted_root.json").read_bytes(),
        )

    def _refresh(self):
        from tuf.api import exceptions as tx

        (self.dir / "tuf").mkdir(exist_ok=True)
        try:
            updater = self._updater()
            updater.refresh()
        except tx.ExpiredMetadataError as exc:
            raise Refused("freeze", f"expired metadata: {exc}") from exc
        except tx.BadVersionNumberError as exc:
            raise Refused("rollback", f"metadata older than what the device has seen: {exc}") from exc
        except tx.UnsignedMetadataError as exc:
            raise Refused("arbitrary-software", f"metadata not signed by keys the trusted root names: {exc}") from exc
        except tx.LengthOrHashMismatchError as exc:
            raise Refused("mix-and-match", f"metadata does not match the snapshot: {exc}") from exc
        except tx.DownloadLengthMismatchError as exc:
            raise Refused("endless-data", f"metadata larger than allowed: {exc}") from exc
        except tx.DownloadHTTPError as exc:
            raise http_refusal(exc, self.base_url) from exc
        except tx.DownloadError as exc:
            raise Unreachable(f"store unreachable: {exc}") from exc
        except tx.RepositoryError as exc:
            raise Refused("bad-metadata", f"{type(exc).__name__}: {exc}") from exc
        _checkpoint("metadata")
        return updater

    def _signed_targets(self) -> dict[str, Any]:
        """path -> sha256 of every signed target (the cache python-tuf just verified)."""
        data = json.loads((self.dir / "tuf" / "targets.json").read_text())
        return {path: info["hashes"].get("sha256") for path, info in data["signed"]["targets"].items()}

    def _fetch_small(self, info: Any) -> bytes:
        from tuf.api import exceptions as tx

        url = join(self.base_url, object_key(info.path, info.hashes["sha256"]))
        # Small documents are read with some slack past the signed length (bounded), so that a
        # substituted one is named for what it is (another release's) rather than just too long.
        limit = min(max(2 * info.length, 64 * 1024), mf.MAX_MANIFEST_BYTES)
        try:
            data = self.fetcher.download_bytes(url, limit)
        except tx.DownloadLengthMismatchError as exc:
            raise Refused("endless-data", f"{info.path}: more than {limit} bytes (signed: {info.length}); cut off") from exc
        except tx.DownloadHTTPError as exc:
            raise Missing(f"{url}: HTTP {exc.status_code}") from exc
        except tx.DownloadError as exc:
            raise Unreachable(f"{url}: {exc}") from exc
        self._check(info, data)
        return data

    def _check(self, info: Any, data: bytes) -> None:
        if len(data) != info.length or _sha256_bytes(data) != info.hashes["sha256"]:
            sha = _sha256_bytes(data)
            if info.path.startswith("channels/"):
                try:
                    named = int(json.loads(data)["version"])
                except (ValueError, KeyError, TypeError):
                    named = None
                active = self.active_manifest()
                if named is not None and active is not None and named < active["version"]:
                    raise Refused("rollback", f"{info.path} was re-pointed to version {named} (active {active['version']}) without the signing keys")
                raise Refused("mix-and-match", f"{info.path} does not match the signed metadata")
            other = [p for p, h in self._signed_targets().items() if h == sha and p != info.path]
            if other:
                raise Refused("mix-and-match", f"{info.path} holds the content of {other[0]} (another release)")
            raise Refused("corrupted-download", f"{info.path}: {len(data)} bytes, sha256 {sha[:12]}…; signed: {info.length} bytes, {info.hashes['sha256'][:12]}…")

    def _pull(self) -> dict[str, Any]:
        updater = self._refresh()
        pointer_path = f"channels/{self.channel}.json"
        info = updater.get_targetinfo(pointer_path)
        if info is None:
            raise Refused("not-published", f"channel {self.channel!r} is not in the signed metadata")
        pointer = json.loads(self._fetch_small(info))
        if pointer.get("channel", self.channel) != self.channel:
            raise Refused("mix-and-match", f"{pointer_path} is the pointer of channel {pointer.get('channel')!r}")
        active = self.active_manifest()
        active_version = active["version"] if active else None
        target = {"version": pointer["version"], "manifest_sha256": pointer["manifest_sha256"]}
        result: dict[str, Any] = {"target_version": pointer["version"]}
        if not in_cohort(self.device_id, pointer):
            previous = pointer.get("previous")
            if active is not None or previous is None:
                return {**result, "state": "not-in-cohort"}
            target = previous  # a new station outside the cohort starts on the release before
        if active is not None and target["version"] == active_version:
            slot_sha = json.loads((self.slot("active") / INSTALL_FILE).read_text())["manifest_sha256"]
            if slot_sha == target["manifest_sha256"]:
                return {**result, "state": "up-to-date"}
            raise Refused("mix-and-match", f"version {active_version} is signed with another manifest than the one installed")
        if active is not None and target["version"] < active_version and pointer.get("action") != "rollback":
            raise Refused("rollback", f"channel {self.channel} points to version {target['version']}, older than the active {active_version}")
        release = f"{target['version']}:{target['manifest_sha256']}"
        if release in self.state.get("refused", {}):
            known = self.state["refused"][release]
            return {**result, "state": "held", "reason": known["reason"], "last_error": f"release refused earlier: {known['error']}"}
        try:
            self._install(updater, target, release)
        except Refused as exc:
            if exc.permanent:
                self._mark_refused(release, exc.reason, str(exc))
            raise
        return {**result, "state": "updated", "updated_from": active_version}

    def _install(self, updater: Any, target: dict[str, Any], release: str) -> None:
        version = target["version"]
        staging = self.dir / "staging" / f"{version}-{target['manifest_sha256'][:12]}"
        staging.mkdir(parents=True, exist_ok=True)
        manifest_info = updater.get_targetinfo(f"models/{version}/{mf.MANIFEST_FILE}")
        if manifest_info is None:
            raise Refused("arbitrary-software", f"models/{version}/{mf.MANIFEST_FILE} is not in the signed metadata")
        if manifest_info.hashes["sha256"] != target["manifest_sha256"]:
            raise Refused("mix-and-match", f"the channel pointer names manifest {target['manifest_sha256'][:12]}…, the signed version {version} is {manifest_info.hashes['sha256'][:12]}…")
        manifest_bytes = self._fetch_small(manifest_info)
        document = json.loads(manifest_bytes)
        try:
            entries = mf.check_manifest_fields(document)
        except mf.PackageError as exc:
            raise Refused("bad-manifest", str(exc), permanent=True) from exc
        if document["version"] != version:
            raise Refused("mix-and-match", f"models/{version}/{mf.MANIFEST_FILE} says version {document['version']}")
        if version_tuple(document["min_agent_version"]) > version_tuple(AGENT_VERSION):
            raise Refused("agent-too-old", f"version {version} needs agent {document['min_agent_version']}, this is {AGENT_VERSION}")

        files: dict[str, tuple[int, str]] = {}
        coded = (document.get("container") or {}).get("path")
        names = [(e["path"], e["size_bytes"], e["sha256"]) for e in entries if e["path"] != coded] + [(mf.SIGNATURE_FILE, None, None)]
        for name, size, sha in names:
            info = updater.get_targetinfo(f"models/{version}/{name}")
            if info is None:
                raise Refused("arbitrary-software", f"models/{version}/{name} is not in the signed metadata")
            if size is not None and (info.length != size or info.hashes["sha256"] != sha):
                raise Refused("mix-and-match", f"models/{version}/{name}: the manifest and the signed metadata disagree")
            if name == mf.MODEL_FILE:
                self._acquire_model(updater, version, document, info, staging)
            else:
                self._download(info, staging / name)
            files[name] = (info.length, info.hashes["sha256"])
        files[mf.MANIFEST_FILE] = (len(manifest_bytes), manifest_info.hashes["sha256"])
        (staging / mf.MANIFEST_FILE).write_bytes(manifest_bytes)
        _checkpoint("downloaded")

        run_canary(staging, document)
        _checkpoint("canary")
        record = {"version": version, "manifest_sha256": target["manifest_sha256"], "files": files, "installed_at": _now(), "release": release}
        _write_json(staging / INSTALL_FILE, record)
        slots = self.dir / "slots"
        slots.mkdir(exist_ok=True)
        slot = slots / f"{version}-{target['manifest_sha256'][:12]}-{uuid.uuid4().hex[:6]}"
        os.rename(staging, slot)
        fsync_dir(slots)
        _checkpoint("staged")
        self._swap(slot, release)

    def _acquire_model(self, updater: Any, version: int, document: dict[str, Any], model_info: Any, staging: Path) -> None:
        """model.onnx by the fewest bytes: a delta from the active model, else the container, else whole.

        The delta and the container are signed targets like any other; what they decode to must
        hash to model.onnx's signed sha256, else the next way is tried. The way taken, the bytes it
        downloaded and why a cheaper way was given up land in status.json (`model_source`).
        """
        dest = staging / mf.MODEL_FILE
        expected = model_info.hashes["sha256"]
        if dest.is_file() and dest.stat().st_size == model_info.length and mf.sha256_file(dest) == expected:
            return  # left whole by a run that was killed later
        gave_up: list[str] = []
        for source, key, base in self._model_sources(version, document):
            info = updater.get_targetinfo(key)
            if info is None:
                continue
            try:
                self._download(info, staging / Path(key).name)
                coded = (staging / Path(key).name).read_bytes()
                model = container.apply_delta(base(), coded, expected) if source == "delta" else container.decode(coded, expected)
            except (container.ContainerError, Refused, Missing, OSError) as exc:
                gave_up.append(f"{source}: {exc}")
                continue
            atomic_write(dest, lambda handle, data=model: handle.write(data))
            self.model_source = {"source": source, "downloaded_bytes": info.length, "model_bytes": model_info.length, "gave_up": gave_up}
            return
        self._download(model_info, dest)
        self.model_source = {"source": "full", "downloaded_bytes": model_info.length, "model_bytes": model_info.length, "gave_up": gave_up}

    def _model_sources(self, version: int, document: dict[str, Any]) -> list[tuple[str, str, Any]]:
        """(kind, target path, base bytes reader) of the cheaper ways to model.onnx, cheapest first."""
        sources = []
        active = self.slot("active")
        if active is not None:
            base_version = self.active_manifest()["version"]
            sources.append(("delta", delta_key(version, base_version), lambda: (active / mf.MODEL_FILE).read_bytes()))
        coded = (document.get("container") or {}).get("path")
        if coded:
            sources.append(("container", f"models/{version}/{coded}", None))
        return sources

    def _download(self, info: Any, dest: Path) -> None:
        """Download one signed object with resume; a bad hash is retried from scratch."""
        sha = info.hashes["sha256"]
        if dest.is_file() and dest.stat().st_size == info.length and mf.sha256_file(dest) == sha:
            return  # left whole by a run that was killed later
        url = join(self.base_url, object_key(info.path, sha))
        part = dest.with_name(dest.name + ".part")
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                self.fetcher.download(url, part, info.length)
            except EndlessData as exc:
                part.unlink(missing_ok=True)
                raise Refused("endless-data", str(exc)) from exc
            if mf.sha256_file(part) == sha:
                os.replace(part, dest)
                return
            data = part.read_bytes()
            part.unlink()
            self.retries += 1
            try:
                self._check(info, data)
            except Refused as exc:
                if exc.reason == "mix-and-match" or attempt == DOWNLOAD_ATTEMPTS:
                    raise Refused(exc.reason, f"{exc} (after {attempt} attempt{'s' if attempt > 1 else ''})") from None

    def _swap(self, slot: Path, release: str) -> None:
        old_active, old_previous = self.slot("active"), self.slot("previous")
        rel = lambda p: os.path.relpath(p, self.dir) if p else None  # noqa: E731
        _write_json(self.dir / "journal.json", {"new": rel(slot), "old_active": rel(old_active), "old_previous": rel(old_previous), "release": release})
        _checkpoint("journal")
        if old_active is not None:
            self._set_link("previous", old_active)
        _checkpoint("previous")
        self._set_link("active", slot)
        _checkpoint("active")
        try:
            health_check(slot)
        except Exception as exc:
            self._undo(json.loads((self.dir / "journal.json").read_text()))
            reason = exc.reason if isinstance(exc, Refused) else "health-check-failed"
            raise Refused("health-check-failed", f"rolled back to the previous model: {reason}: {exc}", permanent=True) from exc
        _checkpoint("health")
        (self.dir / "journal.json").unlink()
        fsync_dir(self.dir)
        _checkpoint("committed")
        if old_previous is not None and old_previous != old_active:
            shutil.rmtree(old_previous, ignore_errors=True)
        shutil.rmtree(self.dir / "staging", ignore_errors=True)

    # --- status --------------------------------------------------------------------------

    def report(self, outcome: dict[str, Any]) -> dict[str, Any]:
        """Write status.json locally and to devices/<id>/status.json in the store (best effort)."""
        active = self.active_manifest() if self.slot("active") else None
        previous_slot = self.slot("previous")
        previous = json.loads((previous_slot / mf.MANIFEST_FILE).read_text()) if previous_slot else None
        status = {
            "device_id": self.device_id,
            "channel": self.channel,
            "version": active["version"] if active else None,
            "version_label": active.get("version_label") if active else None,
            "previous_version": previous["version"] if previous else None,
            "health": "ok" if active else "no-model",
            "agent_version": AGENT_VERSION,
            "time": self.clock().isoformat(timespec="seconds"),
            # Downloads resumed or restarted in this agent's lifetime: kept when a pull fails too.
            "resumes": self.fetcher.resumes,
            "retries": self.retries,
            "model_source": self.model_source,
            **outcome,
        }
        if self.status_sections is not None:
            try:
                status.update(self.status_sections())
            except Exception as exc:  # noqa: BLE001 - a broken journal must not stop updates or their report
                status["station_error"] = f"{type(exc).__name__}: {exc}"
        _write_json(self.dir / "status.json", status)
        if self.status_store is not None:
            try:
                self.status_store.put_bytes(f"devices/{self.device_id}/status.json", (json.dumps(status, indent=2, sort_keys=True) + "\n").encode())
                status["reported"] = True
            except Exception as exc:  # the store being down must not stop the device
                status["reported"] = False
                status["report_error"] = str(exc)
        return status


def run(
    agent: Agent,
    interval_s: float = 900.0,
    retry_s: float = 5.0,
    iterations: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
    on_status: Callable[[dict[str, Any]], None] | None = None,
    step: Callable[[], dict[str, Any]] | None = None,
) -> list[float]:
    """Pull every `interval_s`, jittered ±50% so a fleet does not poll in step; after a transient
    failure retry sooner, backing off exponentially from `retry_s` up to the interval. `step`
    replaces the bare pull (a station's whole cycle: skyedge.device.station.Station.cycle).
    Returns the delays slept (for tests); loops forever when `iterations` is None."""
    delays: list[float] = []
    failures = 0
    count = 0
    while iterations is None or count < iterations:
        status = step() if step is not None else agent.pull()
        count += 1
        if on_status:
            on_status(status)
        if status.get("reason") in TRANSIENT:
            failures += 1
            base = min(interval_s, retry_s * 2 ** (failures - 1))
        else:
            failures = 0
            base = interval_s
        delay = base * (0.5 + rng())
        delays.append(delay)
        if iterations is None or count < iterations:
            sleep(delay)
    return delays
