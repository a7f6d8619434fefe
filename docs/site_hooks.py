"mkdocs hooks for the offline site: MathJax from the site itself, with a path relative to each page."
import posixpath, re

PLACEHOLDER = 'MMVAE_NB_MATHJAX_URL'
CONFIG = 'TeX-AMS-MML_HTMLorMML-full,Safe,local/site'


def mathjax_url(page):
    "assets/mathjax/MathJax.js relative to `page` (works from file:// and under any base URL)."
    here = posixpath.dirname(page.url) or '.'
    return posixpath.relpath('assets/mathjax/MathJax.js', here) + '?config=' + CONFIG


def chapter_links(output, page):
    "Bare `NN_name.ipynb` links (docstrings rendered by mkdocstrings) -> that chapter's page, relative to `page`."
    root = posixpath.relpath('.', posixpath.dirname(page.url) or '.')
    return re.sub(r'href="(\d\w*)\.ipynb(#[^"]*)?"', lambda m: f'href="{root}/{m[1]}.html{m[2] or ""}"', output)


def on_post_page(output, page, config, **kwargs):
    output, url = chapter_links(output, page), mathjax_url(page)
    if PLACEHOLDER in output: return output.replace(PLACEHOLDER, url)       # notebook pages (mkdocs-jupyter)
    if 'class="arithmatex"' in output:                                        # Markdown pages with math
        output = output.replace('</body>', f'<script src="{url}"></script>\n</body>', 1)
    return output
