"mkdocs hooks for the offline site: MathJax from the site itself, with a path relative to each page."
import posixpath

PLACEHOLDER = 'MMVAE_NB_MATHJAX_URL'
CONFIG = 'TeX-AMS-MML_HTMLorMML-full,Safe,local/site'


def mathjax_url(page):
    "assets/mathjax/MathJax.js relative to `page` (works from file:// and under any base URL)."
    here = posixpath.dirname(page.url) or '.'
    return posixpath.relpath('assets/mathjax/MathJax.js', here) + '?config=' + CONFIG


def on_post_page(output, page, config, **kwargs):
    url = mathjax_url(page)
    if PLACEHOLDER in output: return output.replace(PLACEHOLDER, url)       # notebook pages (mkdocs-jupyter)
    if 'class="arithmatex"' in output:                                        # Markdown pages with math
        output = output.replace('</body>', f'<script src="{url}"></script>\n</body>', 1)
    return output
