"""Forget specifications: every form, the partition they produce, the digest, privacy of the repr, bad input."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from mlflow_unlearn.data import (
    DataSplit,
    ForgetSpec,
    describe,
    forget_digest,
    list_forget_specs,
    load_data,
    parse_forget_spec,
    resolve_forget,
)
from mlflow_unlearn.data.forget import CLASS_FORGETTING, FORGETTING_KINDS, SAMPLE_FORGETTING, SPEC_FORMS


@pytest.fixture(scope="module")
def digits() -> DataSplit:
    return load_data("digits", seed=0)


@pytest.fixture()
def people(tmp_path) -> DataSplit:
    """60 samples with string IDs that look like personal data, 3 classes."""
    ids = np.array([f"patient-{i:04d}@clinic" for i in range(60)])
    x = np.random.default_rng(0).integers(0, 256, size=(60, 4, 4)).astype(np.uint8)
    np.savez(tmp_path / "people.npz", x=x, y=np.arange(60) % 3, ids=ids)
    return load_data(f"npz:{tmp_path / 'people.npz'}", seed=0, test_fraction=0.25)


def _assert_partition(split: DataSplit, fs) -> None:
    forget, retain, train = set(fs.forget.ids.tolist()), set(fs.retain.ids.tolist()), set(split.train.ids.tolist())
    assert forget and retain and not forget & retain and forget | retain == train
    assert fs.test is split.test
    assert fs.count == len(fs.forget) == len(forget)
    assert fs.digest == forget_digest(fs.forget.ids)


def test_list_forget_specs():
    assert [s.split(":")[0] for s in list_forget_specs()] == ["classes", "ids", "random"]


def test_classes_spec(digits):
    fs = resolve_forget(digits, "classes: 7, 3,7")
    _assert_partition(digits, fs)
    assert fs.kind == "class" and fs.forget_classes == (3, 7) and fs.spec == "classes: 7, 3,7"
    assert set(fs.forget.y.tolist()) == {3, 7} and not {3, 7} & set(fs.retain.y.tolist())
    assert fs.count == int(np.isin(digits.train.y.numpy(), [3, 7]).sum())
    assert fs.num_classes == 10


def _chosen(split: DataSplit, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice(split.train.ids, size=n, replace=False)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "pq", "txt"])
def test_ids_spec_every_file_format_int_ids(digits, tmp_path, fmt):
    chosen = _chosen(digits, 25)
    path = tmp_path / f"request.{fmt}"
    table = pd.DataFrame({"id": chosen, "reason": "gdpr"})
    if fmt == "csv":
        table.to_csv(path, index=False)
    elif fmt == "txt":
        path.write_text("\n".join(f"  {v}  " for v in chosen) + "\n\n")
    else:
        table.to_parquet(path)
    fs = resolve_forget(digits, f"ids:{path}")
    _assert_partition(digits, fs)
    assert fs.kind == "sample" and fs.forget_classes == () and fs.spec == f"ids:{path}"
    assert sorted(fs.forget.ids.tolist()) == sorted(chosen.tolist())


def test_ids_spec_on_a_string_id_dataset(people, tmp_path):
    chosen = _chosen(people, 5)
    pd.DataFrame({"id": chosen}).to_parquet(tmp_path / "r.parquet")
    fs = resolve_forget(people, f"ids:{tmp_path / 'r.parquet'}")
    _assert_partition(people, fs)
    assert sorted(fs.forget.ids.tolist()) == sorted(chosen.tolist())


def test_ids_spec_matches_string_ids_to_an_int_dataset(digits, tmp_path):
    chosen = _chosen(digits, 4)
    pd.DataFrame({"id": [str(v) for v in chosen]}).astype({"id": "string"}).to_parquet(tmp_path / "s.parquet")
    fs = resolve_forget(digits, f"ids:{tmp_path / 's.parquet'}")
    assert sorted(fs.forget.ids.tolist()) == sorted(chosen.tolist())


@pytest.mark.parametrize(("spec", "expected"), [("random:0.1", None), ("random:0.25:3", None), ("random:40:2", 40)])
def test_random_spec(digits, spec, expected):
    fs = resolve_forget(digits, spec)
    _assert_partition(digits, fs)
    assert fs.kind == "sample"
    fraction = float(spec.split(":")[1])
    assert fs.count == (expected if expected is not None else round(fraction * len(digits.train)))
    again = resolve_forget(digits, spec)
    assert np.array_equal(fs.forget.ids, again.forget.ids) and fs.digest == again.digest


def test_random_spec_seed_changes_the_set_and_defaults_to_zero(digits):
    default, zero, one = (resolve_forget(digits, s) for s in ("random:0.1", "random:0.1:0", "random:0.1:1"))
    assert default.digest == zero.digest != one.digest
    assert set(zero.forget.ids.tolist()) != set(one.forget.ids.tolist())


# ------------------------------------------------------------------------------------------------- digest


def test_digest_follows_the_documented_encoding():
    """SHA-256 over a domain tag, then the salt and each sorted canonical ID, each length-prefixed (8 bytes)."""
    h = hashlib.sha256(b"mlflow-unlearn/sample-ids/v1")
    for item in (b"pepper", b"10", b"2", b"b\xc3\xa9"):  # "10" < "2" in byte order; "bé" in UTF-8
        h.update(len(item).to_bytes(8, "big") + item)
    assert forget_digest(np.array(["2", "bé", "10"]), salt="pepper") == h.hexdigest()


def test_digest_order_independent_type_stable_and_salted():
    ids = np.array([5, 17, 3, 1000])
    base = forget_digest(ids)
    assert len(base) == 64 and int(base, 16) >= 0
    assert forget_digest(ids[::-1]) == forget_digest(ids.tolist()) == forget_digest(ids.astype(np.int32)) == base
    assert forget_digest([str(v) for v in ids]) == base  # canonical text form: 5 and "5" are the same ID
    assert forget_digest(ids, salt="s1") != base != forget_digest(ids[:3])
    assert forget_digest(ids, salt="s1") != forget_digest(ids, salt="s2")
    # no ambiguity between the salt and the IDs, nor between concatenated IDs
    assert forget_digest(["ab"], salt="") != forget_digest(["b"], salt="a")
    assert forget_digest(["a", "b"]) != forget_digest(["ab"])


def test_resolve_forget_digest_is_salted_and_independent_of_request_order(digits, tmp_path):
    chosen = _chosen(digits, 10)
    (tmp_path / "a.txt").write_text("\n".join(map(str, chosen)))
    pd.DataFrame({"id": chosen[::-1]}).to_csv(tmp_path / "b.csv", index=False)
    a, b = resolve_forget(digits, f"ids:{tmp_path / 'a.txt'}"), resolve_forget(digits, f"ids:{tmp_path / 'b.csv'}")
    assert a.digest == b.digest == forget_digest(chosen)
    salted = resolve_forget(digits, f"ids:{tmp_path / 'a.txt'}", salt="org-secret")
    assert salted.digest == forget_digest(chosen, salt="org-secret") != a.digest


def test_forget_ids_never_appear_in_spec_digest_or_repr(people, tmp_path):
    chosen = _chosen(people, 6)
    path = tmp_path / "request.csv"
    pd.DataFrame({"id": chosen}).to_csv(path, index=False)
    for fs in (resolve_forget(people, f"ids:{path}"), resolve_forget(people, "random:0.2:5"),
               resolve_forget(people, "classes:1")):
        texts = [repr(fs), str(fs), fs.spec, fs.digest, repr(fs.forget), repr(fs.retain), str(describe(people))]
        for sample_id in fs.forget.ids.tolist():
            assert all(sample_id not in text for text in texts), sample_id
        assert "patient-" not in repr(fs)


# ---------------------------------------------------------------------------------------------- bad input


def test_unknown_ids_report_the_count_and_a_keyed_digest_never_an_id(digits, tmp_path):
    """Issue 17 item 3: the message names no ID (it used to list ten), only the count and, with a key, the keyed
    digest of the unknown subset, which the key holder can check."""
    known = _chosen(digits, 3).tolist()
    unknown = list(range(100_000, 100_015))
    (tmp_path / "r.txt").write_text("\n".join(map(str, known + unknown)))
    with pytest.raises(ValueError, match=r"15 of the 18 IDs .* not in the training split") as info:
        resolve_forget(digits, f"ids:{tmp_path / 'r.txt'}", key=b"k" * 16)
    message = str(info.value)
    assert forget_digest(unknown, key=b"k" * 16)[:16] in message
    assert not any(str(v) in message for v in known + unknown)
    with pytest.raises(ValueError, match=r"15 of the 18 IDs") as info:
        resolve_forget(digits, f"ids:{tmp_path / 'r.txt'}")
    assert not any(str(v) in str(info.value) for v in known + unknown) and "keyed digest" not in str(info.value)


def test_ids_in_the_test_split_are_unknown_and_counted(digits, tmp_path):
    (tmp_path / "r.txt").write_text("\n".join(map(str, digits.test.ids[:2])))
    with pytest.raises(ValueError, match=r"2 of the 2 IDs .*; 2 of them are in its test split"):
        resolve_forget(digits, f"ids:{tmp_path / 'r.txt'}")


def test_duplicate_ids_are_rejected_without_listing_them(people, tmp_path):
    chosen = _chosen(people, 3).tolist()
    (tmp_path / "r.txt").write_text("\n".join(chosen + chosen[:1]))
    with pytest.raises(ValueError, match=r"lists 1 duplicate IDs; list each ID once") as info:
        resolve_forget(people, f"ids:{tmp_path / 'r.txt'}")
    assert not any(sample_id in str(info.value) for sample_id in chosen)


@pytest.fixture(scope="module")
def bad_request_files(tmp_path_factory):
    """The folder of the bad forget request files that :data:`BAD_FORGET_SPECS` name as ``{files}``."""
    files = tmp_path_factory.mktemp("bad-requests")
    (files / "empty.txt").write_text("\n\n")
    pd.DataFrame({"ident": [1, 2]}).to_csv(files / "no_id.csv", index=False)
    (files / "bad.parquet").write_bytes(b"PAR1 garbage")
    (files / "ids.json").write_text("[1, 2]")
    (files / "blank.csv").write_text("id,x\n1,a\n,b\n")
    return files


#: (forget spec, message): ``{files}`` is the folder of :func:`bad_request_files`, ``{n_train}`` the size of the
#: training set.
BAD_FORGET_SPECS = [
    ("classes:3,11", r"Unknown classes \[11\].*training set has classes \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]"),
    ("classes:a", r"Malformed class list .*1 of its 1 .* not ints \(not repeated.*e.g. classes:3,7"),
    ("classes:", r"Malformed class list"),
    ("classes:3;7", r"Malformed class list .*1 of its 1 "),
    ("classes:" + ",".join(str(c) for c in range(10)), r"selects the whole training set \({n_train} samples\)"),
    ("random:0", r"selects no training samples \(empty forget set\)"),
    ("random:0.0", r"fraction in \(0, 1\).*but got '0.0'"),
    ("random:1.0", r"fraction in \(0, 1\).*but got '1.0'"),
    ("random:1.5", r"fraction in \(0, 1\).*but got '1.5'"),
    ("random:-0.1", r"fraction in \(0, 1\).*but got '-0.1'"),
    ("random:many", r"fraction in \(0, 1\).*but got \(4 characters, not repeated"),
    ("random:5000", r"selects the whole training set"),
    ("random:0.1:x", r"seed in random:<amount>:<seed> to be a non-negative int but got \(1 characters"),
    ("forget:3", r"Unknown forget spec kind before ':' \(6 characters, not repeated.*; accepted forms: "
                 r"classes:.*ids:.*random:"),
    ("3,7", r"Expected a forget spec like 'classes:3,7' but got text without a '<kind>:' prefix \(3 char"),
    # a request file is never named by its path (it may name the person): "the forget request file"
    ("ids:{files}/missing.csv", r"^The forget request file does not exist or is not a file$"),
    ("ids:{files}/empty.txt", r"empty forget set"),
    ("ids:{files}/no_id.csv", r"^The forget request file has no column 'id'; expected columns 'id'$"),
    ("ids:{files}/bad.parquet", r"^Cannot read the forget request file as parquet"),
    ("ids:{files}/ids.json", r"^Cannot tell the format of the forget request file from its suffix; "
                             r"expected one of: \.csv, \.parquet, \.txt, \.pq$"),
    ("ids:{files}/blank.csv", r"1 rows of the forget request .* have an empty `id`"),
]


@pytest.mark.parametrize(("spec", "message"), BAD_FORGET_SPECS, ids=[spec[:40] for spec, _ in BAD_FORGET_SPECS])
def test_bad_forget_specs_raise_clear_errors(digits, bad_request_files, spec, message):
    with pytest.raises(ValueError, match=message.replace("{n_train}", str(len(digits.train)))) as raised:
        resolve_forget(digits, spec.format(files=bad_request_files))
    assert str(bad_request_files) not in str(raised.value) and "ident" not in str(raised.value)


def test_bad_salt(digits):
    with pytest.raises(ValueError, match=r"`salt` to be a string but got bytes"):
        resolve_forget(digits, "classes:1", salt=b"x")


# ---------------------------------------------------------------------------------------------- the grammar alone


@pytest.mark.parametrize(("text", "expected"), [
    ("classes:7, 3,7", ForgetSpec("classes:7, 3,7", "classes", classes=(3, 7))),
    ("ids:/srv/forget.csv", ForgetSpec("ids:/srv/forget.csv", "ids", path="/srv/forget.csv")),
    ("ids:requests/r.parquet", ForgetSpec("ids:requests/r.parquet", "ids", path="requests/r.parquet")),
    ("random:0.1", ForgetSpec("random:0.1", "random", fraction=0.1)),
    ("random:0.25:7", ForgetSpec("random:0.25:7", "random", fraction=0.25, seed=7)),
    ("random:100", ForgetSpec("random:100", "random", count=100)),
    ("random:100:3", ForgetSpec("random:100:3", "random", count=100, seed=3)),
])
def test_parse_forget_spec_reads_every_form_without_data(text, expected):
    spec = parse_forget_spec(text)
    assert spec == expected
    assert spec.forgetting_kind == (CLASS_FORGETTING if spec.form == "classes" else SAMPLE_FORGETTING)
    assert spec.form in SPEC_FORMS and spec.forgetting_kind in FORGETTING_KINDS
    assert SPEC_FORMS == ("classes", "ids", "random")


def test_parse_forget_spec_canonical_and_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_forget_spec("classes:7,3,3").canonical == "classes:3,7"
    assert parse_forget_spec("random:0.1:2").canonical == "random:0.1:2"
    relative = parse_forget_spec("ids:r.txt")
    assert relative.absolute() == ForgetSpec(f"ids:{tmp_path / 'r.txt'}", "ids", path=str(tmp_path / "r.txt"))
    assert relative.absolute().absolute() == relative.absolute()
    assert parse_forget_spec("classes:3").absolute() == parse_forget_spec("classes:3")


@pytest.mark.parametrize("text", ["3,7", "forget:3", "classes:a", "random:1.5", "random:0.1:x", "ids:x.json"])
def test_parse_and_resolve_give_the_same_message(digits, text):
    with pytest.raises(ValueError) as parsed:
        parse_forget_spec(text)
    with pytest.raises(ValueError) as resolved:
        resolve_forget(digits, text)
    assert str(parsed.value) == str(resolved.value)


SECRETS = [f"patient-{i:04d}" for i in range(30)]
INLINE = ",".join(SECRETS)


@pytest.mark.parametrize("text", [f"ids:{INLINE}", f"ids:{SECRETS[0]}", INLINE, f"{INLINE}:x", f"classes:{INLINE}",
                                  f"random:{INLINE}"], ids=["ids-list", "ids-one", "bare", "bare-kind", "classes",
                                                            "random"])
def test_grammar_errors_never_repeat_inline_ids_or_long_text(text):
    with pytest.raises(ValueError, match="accepted forms|file name|Malformed class list|fraction in") as info:
        parse_forget_spec(text)
    message = str(info.value)
    assert len(message) < 400 and "\n" not in message
    assert not any(secret in message for secret in SECRETS[1:]), message


def test_inline_ids_are_refused_without_repeating_them(digits):
    with pytest.raises(ValueError, match="not a file name; write the IDs into such a file") as info:
        resolve_forget(digits, "ids:1,2,3")
    assert "1,2,3" not in str(info.value)
