"""Set-up's edit of GNU Radio Companion's [grc] local_blocks_path (gr_gdmcom.grc_config)."""

from pathlib import Path

from gr_gdmcom import grc_config


def _checkout(root: Path, name: str) -> str:
    grc = root / name / "grc"
    grc.mkdir(parents=True)
    (grc / grc_config.MARKER).write_text("id: gr_gdmcom_semantic_source\n")
    return str(grc)


def _paths(conf: Path) -> list:
    line = next(x for x in conf.read_text().splitlines() if x.startswith("local_blocks_path"))
    return line.split("=", 1)[1].strip().split(":")


def test_two_checkouts_set_up_one_after_the_other_each_gets_its_own_blocks(tmp_path, capsys):
    conf = tmp_path / "home" / ".gnuradio" / "config.conf"
    other = tmp_path / "gr-satellites" / "grc"
    other.mkdir(parents=True)
    conf.parent.mkdir(parents=True)
    conf.write_text(f"# my settings\n[grc]\nlocal_blocks_path = {other}\nxterm_executable = /usr/bin/xterm\n"
                    "\n[log]\nlog_level = info\n")
    a, b = _checkout(tmp_path, "a"), _checkout(tmp_path, "b")

    assert grc_config.main([a, "--config", str(conf)]) == 0
    assert _paths(conf) == [str(other), a]
    assert "(added)" in capsys.readouterr().out

    grc_config.main([b, "--config", str(conf)])
    assert _paths(conf) == [str(other), b]  # a's entry replaced, not appended after it
    assert f"(replaced {a})" in capsys.readouterr().out

    grc_config.main([a, "--config", str(conf)])
    assert _paths(conf) == [str(other), a]
    grc_config.main([a, "--config", str(conf)])
    assert "no change" in capsys.readouterr().out.splitlines()[-1]
    # the rest of the file is kept as it was
    text = conf.read_text()
    assert text.startswith("# my settings\n[grc]\n") and "xterm_executable = /usr/bin/xterm" in text
    assert "[log]\nlog_level = info" in text


def test_stale_entries_of_deleted_checkouts_are_dropped_and_a_missing_file_is_created(tmp_path):
    conf = tmp_path / "config.conf"
    gone_a, gone_b = tmp_path / "old1" / "grc", tmp_path / "old2" / "grc"
    conf.write_text(f"[grc]\nlocal_blocks_path = {gone_a}:{gone_b}\n")
    new = _checkout(tmp_path, "new")
    before, after = grc_config.update(conf, new)
    assert before == [str(gone_a), str(gone_b)] and after == [new]
    fresh = tmp_path / "none" / "config.conf"
    grc_config.update(fresh, new)
    assert fresh.read_text() == f"[grc]\nlocal_blocks_path = {new}\n"
