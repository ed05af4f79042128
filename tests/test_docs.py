"""The documentation's shape: a short README that links every page of docs/, and no relative link in README.md or
docs/*.md that points at nothing. Reads files only (no network, no imports of the package)."""
import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, 'README.md')
DOCS = os.path.join(REPO, 'docs')
MAX_README_LINES = 150
# The pages the README must link (one per concern); any other page of docs/ must be linked too.
PAGES = ('training.md', 'options.md', 'kernels.md', 'export.md', 'lam.md', 'data.md', 'reliability.md', 'compat.md',
         'benchmarks.md', 'tests.md', 'layout.md')

# [text](target) and ![alt](target), target up to the first space or ')' (an optional "title" may follow);
# also reference definitions: [label]: target
INLINE_LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
REFERENCE_LINK = re.compile(r'^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+"[^"]*")?\s*$', re.MULTILINE)
FENCE = re.compile(r'^(```|~~~).*?^\1', re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r'`[^`\n]*`')


def markdown_files():
    return [README] + sorted(glob.glob(os.path.join(DOCS, '*.md')))


def links(path):
    """The link targets of a markdown file, outside fenced code blocks and code spans."""
    with open(path, encoding='utf-8') as f:
        text = CODE_SPAN.sub('', FENCE.sub('', f.read()))
    return INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)


def is_relative(target):
    return not re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*:', target) and not target.startswith(('#', '//'))


def resolve(source, target):
    """The repository path a relative link of ``source`` points at (anchor and query dropped)."""
    target = target.split('#', 1)[0].split('?', 1)[0]
    return os.path.normpath(os.path.join(os.path.dirname(source), target))


def test_readme_is_short():
    with open(README, encoding='utf-8') as f:
        count = len(f.read().splitlines())
    assert count <= MAX_README_LINES, f'README.md has {count} lines; keep it at most {MAX_README_LINES} (move ' \
                                      'reference material into docs/)'


@pytest.mark.parametrize('path', markdown_files(), ids=lambda p: os.path.relpath(p, REPO))
def test_relative_links_resolve(path):
    broken = []
    for target in links(path):
        if not is_relative(target) or not target.split('#', 1)[0]:
            continue
        resolved = resolve(path, target)
        if not resolved.startswith(REPO + os.sep) or not os.path.exists(resolved):
            broken.append(target)
    assert not broken, f'{os.path.relpath(path, REPO)}: links to nothing: {broken}'


def test_readme_links_every_docs_page():
    linked = {resolve(README, t) for t in links(README) if is_relative(t)}
    pages = {os.path.join(DOCS, p) for p in PAGES} | set(glob.glob(os.path.join(DOCS, '*.md')))
    missing = sorted(os.path.relpath(p, REPO) for p in pages if p not in linked)
    assert not missing, f'README.md does not link {missing}'
    assert all(os.path.exists(os.path.join(DOCS, p)) for p in PAGES)


def test_the_link_reader_sees_links():
    """The checks above would pass vacuously if links() found nothing."""
    assert len(links(README)) >= len(PAGES)
    assert resolve(README, 'docs/kernels.md#openmp') == os.path.join(DOCS, 'kernels.md')
    assert not is_relative('https://example.org/x.md') and not is_relative('#section')
