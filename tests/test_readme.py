"""The README's library example runs as written, so the docs cannot rot."""

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_opens_with_the_two_commands():
    first_block = re.search(r"```\n(.*?)```", README.read_text(), flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make train", "make test"]


def test_readme_library_example_runs(tmp_path):
    blocks = python_blocks()
    assert blocks, "README has no python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "loss" in out.stdout and "'global': 0.1" in out.stdout.replace("0.1000", "0.1")


def test_the_results_table_links_every_study_in_experiments():
    """Each folder of experiments/ with a RESULTS.md is linked from the README's results table."""
    text = README.read_text()
    table = text[text.index("## Results"):text.index("## Command line")]
    studies = sorted(p.parent.name for p in (README.parent / "experiments").glob("*/RESULTS.md"))
    assert studies
    missing = [name for name in studies if f"(experiments/{name}/RESULTS.md)" not in table]
    assert not missing, f"the README's results table does not link {missing}"
