"""nnunet_cin.inference.orphans: no process of a run outlives it. The end-to-end checks (SIGKILL and SIGTERM of
nnUNetv2_predict_cin, SIGTERM of the demo) are in test_predict.py and test_demo.py; here each mechanism alone, in a
short-lived Python that forks the way nnU-Net's Manager does."""
import os
import subprocess
import sys
import textwrap

import pytest

from nnunet_helpers import marked_env, marked_running

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux: /proc and the parent-death signal")


def _run_script(body: str, tmp_path) -> subprocess.CompletedProcess:
    env = marked_env(dict(os.environ))
    script = "import os, sys, time\nfrom nnunet_cin.inference import orphans\n" + textwrap.dedent(body)
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:  # files: a pipe would
        result = subprocess.run([sys.executable, "-c", script], env=env, stdout=out, stderr=err,  # wait for the
                                timeout=120)  # children, who inherit it
    result.stdout, result.stderr = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    result.left = marked_running(env, 5)
    return result


def test_a_child_forked_inside_the_block_ends_with_its_parent(tmp_path):
    result = _run_script("""
        with orphans.forked_children_end_with_this_process():
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
        os._exit(0)  # the parent dies at once, the child would sleep on
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not result.left, "a child forked inside the block outlived its parent"


def test_a_child_forked_outside_the_block_is_not_armed(tmp_path):
    """The reference for the test above: the same fork outside the block outlives its parent (so the test above
    measures the block, not something else that ends the child)."""
    result = _run_script("""
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        os._exit(0)
    """, tmp_path)
    try:
        assert len(result.left) == 1, result.left
    finally:
        for pid in result.left:
            os.kill(pid, 9)


def test_a_command_arms_its_forks_for_the_rest_of_its_life(tmp_path):
    """The prediction commands (nnunet_cin.commands) arm every fork of their process, also one made after the run's
    block has ended (a SIGTERM's unwinding, a Pool refilling itself at the interpreter's exit)."""
    result = _run_script("""
        orphans.forks_end_with_this_process_from_now()
        with orphans.forked_children_end_with_this_process():
            pass
        if os.fork() == 0:  # after the block
            time.sleep(60)
            os._exit(0)
        os._exit(0)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not result.left, "a child forked after the block outlived the command's process"
