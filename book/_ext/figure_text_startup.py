# Run by every IPython kernel that the book build starts (PYTHONSTARTUP, set by figure_text.py):
# matplotlib's PNGs record the size of their smallest text. IPython runs this file in the
# notebook's own namespace, with this folder on sys.path, so it defines no names.
__import__("figure_text").install()
