"""Signed shared-cache entries on a real S3 server (SeaweedFS on 127.0.0.1): a writer without a trusted key
cannot reach a workspace that trusts only CI's key, however consistent its entry."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine.test_shared_cache import build, outputs, statuses, workspace
from tests.servers import SeaweedFS


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = SeaweedFS(tmp_path_factory.mktemp("seaweed")).start()
    yield server
    server.stop()


def keypair(folder: Path, name: str) -> tuple[Path, str, Any]:
    """An ed25519 key as `ssh-keygen -t ed25519 -N ''` writes it: (private key file, public key line, key)."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = folder / name
    private.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()))
    public = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    return private, f"{public} {name}@example", key


def products(folder: Path) -> dict[str, bytes]:
    """The output files (not the entries' own logs, timings and manifests, which a rebuild rewrites)."""
    return {rel: body for rel, body in outputs(folder).items() if ".qnnbuild" not in rel}


def rewrite(fs: Any, entry: str, signer: Any) -> None:
    """What a writer holding the bucket's credentials but not a trusted key can do: change the entry's context
    binary and rewrite its manifest to match (every sha256, size and the output digest), signed by its own key."""
    from qnnbuild.engine.store.signing import fingerprint, message

    manifest = json.loads(fs.cat_file(f"{entry}/manifest.json"))
    [binary] = [rel for rel in manifest["files"] if rel.endswith(".bin")]
    body = fs.cat_file(f"{entry}/files/{binary}")
    body = body[:256] + bytes(b ^ 0xFF for b in body[256:272]) + body[272:]  # its end is zero padding
    fs.pipe_file(f"{entry}/files/{binary}", body)
    manifest["files"][binary] = {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
    from qnnbuild.common.hashing import sha256_json

    manifest["digest"] = sha256_json({k: v["sha256"] for k, v in manifest["files"].items()})
    raw = json.dumps(manifest).encode()
    name = f"{hashlib.sha256(raw).hexdigest()}.{fingerprint(signer.public_key())}"
    fs.pipe_file(f"{entry}/signatures/{name}", signer.sign(message(entry.rsplit('/', 1)[1], raw)))
    fs.pipe_file(f"{entry}/manifest.json", raw)


def test_an_entry_no_trusted_key_signed_never_reaches_a_workspace(tmp_path: Path, seaweed: SeaweedFS) -> None:
    bucket = f"signed-{uuid.uuid4().hex[:8]}"
    url = seaweed.bucket(bucket) + "/team"
    (tmp_path / "keys").mkdir()
    ci_key, ci_public, _ = keypair(tmp_path / "keys", "ci")
    dev_key, dev_public, dev = keypair(tmp_path / "keys", "dev")
    trust = tmp_path / "trusted_keys"
    trust.write_text(f"# the keys whose entries this team reads\n{ci_public}\n")
    signing = {"QNNBUILD_CACHE_SIGNING_KEY": str(ci_key), "QNNBUILD_CACHE_TRUSTED_KEYS": str(trust)}
    trusting = {"QNNBUILD_CACHE_TRUSTED_KEYS": str(trust)}

    ci = workspace(tmp_path, "ci")
    code, out, err = build(ci, url, {**seaweed.env(), **signing})
    assert code == 0, err
    keys = {s["id"]: s["key"] for s in out["stages"]}
    fs = seaweed.fs()
    assert all(fs.ls(f"{bucket}/team/{key}/signatures") for key in keys.values())
    assert str(ci_key) not in err and "PRIVATE" not in err

    # a trusting reader takes CI's entries
    code, out, err = build(workspace(tmp_path, "reader"), url, {**seaweed.env(), **trusting}, "--cache-mode", "read")
    assert code == 0, err
    assert set(statuses(out).values()) == {("cached", "remote")}, statuses(out)

    # a writer with the bucket's credentials and its own key replaces compile's entry, consistently
    rewrite(fs, f"{bucket}/team/{keys['compile[SM8650]']}", dev)
    careless = workspace(tmp_path, "careless")  # trusts anything: takes the forged binary (the hole closed below)
    code, out, err = build(careless, url, seaweed.env(), "--cache-mode", "read", "--only", "compile")
    assert code == 0, err
    assert statuses(out)["compile[SM8650]"] == ("cached", "remote")
    compiled = "artifacts/tiny/compile/SM8650/model_ctx_qnn.bin"
    assert (careless / compiled).read_bytes() != (ci / compiled).read_bytes()

    laptop = workspace(tmp_path, "laptop")
    code, out, err = build(laptop, url, {**seaweed.env(), **trusting}, "--cache-mode", "read")
    assert code == 0, err
    assert f"shared cache entry {keys['compile[SM8650]'][:16]}: no trusted key signed it; refused" in err
    assert statuses(out)["compile[SM8650]"] == ("ran", None), statuses(out)
    assert statuses(out)["export"] == ("cached", "remote")
    assert products(laptop) == products(ci)  # CI's bytes, built again; never the forged ones

    # a developer whose key the team does not trust reads CI's entries but uploads nothing
    before = sorted(fs.find(f"{bucket}/team"))
    dev_env = {**seaweed.env(), "QNNBUILD_CACHE_SIGNING_KEY": str(dev_key), "QNNBUILD_CACHE_TRUSTED_KEYS": str(trust)}
    mine = workspace(tmp_path, "mine")
    (mine / "tiny.yaml").write_text((mine / "tiny.yaml").read_text().replace("optimization_level: 3",
                                                                             "optimization_level: 2"))
    code, out, err = build(mine, url, dev_env)
    assert code == 0, err
    assert statuses(out)["export"] == ("cached", "remote") and statuses(out)["compile[SM8650]"][0] == "ran"
    assert "not uploading to the shared cache s3://" in err and "is not among the trusted keys" in err
    assert sorted(fs.find(f"{bucket}/team")) == before
    assert dev_public.split()[1] not in err


def test_a_bad_trust_file_is_a_usage_error(tmp_path: Path) -> None:
    from tests.conftest import run_process

    folder = workspace(tmp_path, "p")
    trust = tmp_path / "trusted_keys"
    trust.write_text("ssh-ed25519 not-base64 someone\n")
    proc = run_process(["run", "tiny.yaml", "--cache", (tmp_path / "cache").as_uri()], folder,
                       {"QNNBUILD_CACHE_TRUSTED_KEYS": str(trust)})
    assert proc.returncode == 2, proc.stderr
    assert f"{trust}, line 1: not an OpenSSH public key" in proc.stderr and "Traceback" not in proc.stderr
