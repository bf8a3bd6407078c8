"""Temporary cache folders: a killed run's leftovers are removed by the next run; replacing an export never fails on a
concurrent identical job (issue 14 #9)."""
import os
import socket
import subprocess
import sys

from qexp.common.tmpdirs import make_tmp, remove_stale, replace_dir


def test_a_dead_processes_tmp_folder_is_removed_and_a_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    host = socket.gethostname()
    stale = tmp_path / f".tmp-entry~{host}~{pid}~abc"
    stale.mkdir()
    mine = make_tmp(tmp_path, "entry")             # removes the stale one first
    assert not stale.exists() and mine.exists() and f"~{os.getpid()}~" in mine.name
    other_host = tmp_path / f".tmp-entry~elsewhere~{pid}~abc"
    other_host.mkdir()
    assert remove_stale(tmp_path) == [] and mine.exists() and other_host.exists()


def test_replace_dir_keeps_one_complete_copy(tmp_path):
    folder = tmp_path / "export"
    first = make_tmp(tmp_path, "export")
    (first / "a.txt").write_text("1")
    replace_dir(first, folder)
    second = make_tmp(tmp_path, "export")
    (second / "a.txt").write_text("2")
    replace_dir(second, folder)                     # an older copy is replaced
    assert (folder / "a.txt").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
