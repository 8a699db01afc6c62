"""The demo data: synthetic IT help-desk tickets (``helpdesk``, from the word material in ``vocabulary``).

May import: the standard library only.
"""
