"""The ``hpo`` commands, one thin module each: they check their flags, then wire the layers
below (spec, storage, trial loop, listing, figures) together. :mod:`hpo.cli` parses the
arguments and calls them; nothing below imports them."""
