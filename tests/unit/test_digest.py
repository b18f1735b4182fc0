from pathlib import Path

from driftloop.registry import directory_sha256


def make_model_dir(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors: {}")
    (root / "sub" / "model.skops").write_bytes(b"\x00weights")
    return root


def test_digest_is_canonical_over_paths_and_bytes(tmp_path: Path) -> None:
    one = directory_sha256(make_model_dir(tmp_path / "one"))
    two = directory_sha256(make_model_dir(tmp_path / "two"))
    assert one == two and len(one) == 64


def test_digest_changes_with_a_byte_or_a_name(tmp_path: Path) -> None:
    base = directory_sha256(make_model_dir(tmp_path / "base"))
    flipped = make_model_dir(tmp_path / "flipped")
    (flipped / "sub" / "model.skops").write_bytes(b"\x01weights")
    renamed = make_model_dir(tmp_path / "renamed")
    (renamed / "sub" / "model.skops").rename(renamed / "sub" / "model2.skops")
    assert directory_sha256(flipped) != base
    assert directory_sha256(renamed) != base


def test_registry_download_marker_is_not_part_of_the_artifact(tmp_path: Path) -> None:
    base = directory_sha256(make_model_dir(tmp_path / "base"))
    downloaded = make_model_dir(tmp_path / "downloaded")
    (downloaded / "registered_model_meta").write_text("model_name: x\nmodel_version: 3\n")
    assert directory_sha256(downloaded) == base
