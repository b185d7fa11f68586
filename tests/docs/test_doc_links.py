"""Every relative link in README.md and docs/ points to a file that exists, every #anchor to a
heading of that file (GitHub's heading ids), and every repository path they name in backticks
(`sd_cli/run/jobs.py`) exists."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# docs/reference/ describes the original repositories, so the files it names are theirs.
OWN_PAGES = [page for page in PAGES if "reference" not in page.parts]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"`((?:sd_cli|tests|builtin_model|benchmarks|scripts|docs)/[\w./-]*)`")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)


def heading_id(title: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.replace("`", "").strip().lower()).replace(" ", "-")


def heading_ids(page: Path) -> set[str]:
    ids, seen = set(), {}
    for title in re.findall(r"^#{1,6} (.+)$", CODE.sub("", page.read_text()), re.MULTILINE):
        base = heading_id(title)
        ids.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return ids


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(CODE.sub("", page.read_text()))
            if not re.match(r"[a-z]+:", target)]


def broken(page: Path, target: str) -> str | None:
    path, _, anchor = target.partition("#")
    linked = (page.parent / path).resolve() if path else page
    if not linked.exists():
        return f"{target}: no such file"
    if anchor and linked.suffix == ".md" and anchor not in heading_ids(linked):
        return f"{target}: no heading #{anchor} in {linked.name}"
    return None


def test_heading_ids_follow_github():
    assert heading_id("img2img, inpaint and depth2img with the k-diffusion samplers") == \
        "img2img-inpaint-and-depth2img-with-the-k-diffusion-samplers"
    assert heading_id("VAE, LoRA and embeddings") == "vae-lora-and-embeddings"
    assert heading_id("`--json` output") == "--json-output"


def test_a_missing_file_and_a_missing_heading_are_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](other.md) [bad](#nothing)\n")
    assert [broken(page, t) for t in relative_links(page)] == [
        None, "other.md: no such file", "#nothing: no heading #nothing in page.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert [problem for target in relative_links(page) if (problem := broken(page, target))] == []


@pytest.mark.parametrize("page", OWN_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_repository_path_exists(page):
    named = sorted(set(REPO_PATH.findall(page.read_text())))
    assert [path for path in named if not (ROOT / path).exists()] == []
