"""The command line as a user meets it: help everywhere, one clear line and exit 2 for their mistakes."""

import json
import os
import subprocess
import sys

import pytest
from output import own_output

from defakenet.cli import build_parser, main

HELP = [[], ["data"], ["data", "inspect"], ["data", "synth"], ["weights"], ["weights", "import-keras"],
        ["config"], ["config", "show"], ["config", "keys"], ["train"], ["evaluate"], ["report"], ["demo"]]


@pytest.mark.parametrize("cmd", HELP, ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: defakenet" in out and len(out.splitlines()) >= 3


def test_train_flags_come_from_config(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    for flag, key in [("--epochs", "train.epochs"), ("--lr", "optim.lr"), ("--freeze-depth", "model.freeze_depth"),
                      ("--workers", "resources.workers"), ("--register", "tracking.register")]:
        assert flag in out and key in out


def _err(capsys, argv):
    code = main(argv)
    err = own_output(capsys.readouterr().err)
    return code, err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["data", "inspect", "/no/such/folder"], "/no/such/folder"),
        (["train", "--data", "/no/such/folder"], "/no/such/folder"),
        (["train"], "no dataset: pass --data"),
        (["train", "--data", ".", "--set", "optim.lrr=1"], "unknown config key optim.lrr; valid keys"),
        (["train", "--data", ".", "--set", "train.epochs=abc"], "train.epochs expects int"),
        (["config", "show", "--config", "/no/such.yaml"], "/no/such.yaml does not exist"),
        (["evaluate", "--model", "/no/model", "--data", "."], "model /no/model does not exist"),
        (["report", "/no/scores.csv", "--output", "/tmp/x"], "/no/scores.csv: no such file"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(capsys, argv, needle):
    code, err = _err(capsys, argv)
    assert code == 2
    assert needle in err and err.startswith("defakenet: error:")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_non_image_dataset_and_bad_weights_file(capsys, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "fake").mkdir()
    (tmp_path / "real" / "a.txt").write_text("not an image")
    code, err = _err(capsys, ["train", "--data", str(tmp_path)])
    assert code == 2 and "has no images" in err and str(tmp_path) in err
    # inspect reports the empty classes; --strict turns them into a failing exit
    assert main(["data", "inspect", str(tmp_path), "--strict"]) == 1
    assert "no images" in capsys.readouterr().out
    bogus = tmp_path / "w.h5"
    bogus.write_text("nope")
    code, err = _err(capsys, ["weights", "import-keras", str(bogus), "-o", str(tmp_path / "o.safetensors")])
    assert code == 2 and str(bogus) in err and not (tmp_path / "o.safetensors").exists()


def test_synth_then_inspect_strict(capsys, tmp_path):
    out = tmp_path / "ds"
    assert main(["data", "synth", str(out), "--n", "20", "--size", "24", "--seed", "3"]) == 0
    assert main(["data", "inspect", str(out), "--strict", "--json", str(tmp_path / "i.json")]) == 0
    info = json.loads((tmp_path / "i.json").read_text())
    assert info["n_images"] == 40
    # leak one image into a second split under another name: --strict fails
    leaked = sorted((out / "fake").glob("*.png"))
    for i in range(40):
        (out / "fake" / f"copy{i:03d}.png").write_bytes(leaked[0].read_bytes())
    capsys.readouterr()
    assert main(["data", "inspect", str(out), "--strict"]) == 1
    captured = capsys.readouterr()
    assert "leak" in (captured.out + captured.err).lower()


def test_report_from_csv(capsys, tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_text("label,score\n0,0.1\n0,0.4\n1,0.35\n1,0.8\n")
    assert main(["report", str(csv), "--output", str(tmp_path / "r"), "--threshold", "0.5"]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["roc_auc"] == 0.75 and m["accuracy"] == 0.75
    code, err = _err(capsys, ["report", str(csv), "--output", str(tmp_path / "r2"), "--threshold", "2"])
    assert code == 2 and "threshold" in err


def test_config_show_resolves_sets(capsys, tmp_path):
    assert main(["config", "show", "--set", "optim.lr=0.005", "--set", "model.freeze_depth=3"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.005" in out and "freeze_depth: 3" in out


def test_console_script_prints_no_traceback(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "defakenet")
    r = subprocess.run([exe, "train", "--data", str(tmp_path / "missing")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(tmp_path / "missing") in r.stderr


def test_serve_args_from_flags_and_arg_pairs(capsys, tmp_path):
    from defakenet.cli import serve_args

    args = build_parser().parse_args(["serve", "--model", str(tmp_path), "--replicas", "2", "--arg", "max_batch_size=32",
                                      "--arg", "max_replicas=4", "--arg", "batch_wait_timeout_s=0.02"])
    s = serve_args(args)
    assert (s.model, s.min_replicas, s.max_replicas, s.max_batch_size, s.batch_wait_timeout_s, s.ongoing) == (
        str(tmp_path), 2, 4, 32, 0.02, 64)
    # bad pairs: exit 2 and one line naming the key, before anything starts
    for pair, needle in [("nope=1", "'nope=1'"), ("max_batch_size=zero", "max_batch_size"),
                         ("max_ongoing_requests=4", "max_ongoing_requests 4 is below max_batch_size 16"),
                         ("max_batch_size", "KEY=VALUE")]:
        code, err = _err(capsys, ["serve", "--model", str(tmp_path), "--arg", pair])
        assert code == 2 and needle in err, (pair, err)
