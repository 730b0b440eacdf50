"""Tools around the framework: the docs generator, the plugin scaffold, plots and figures
(the only users of matplotlib). Nothing in :mod:`ddpmkit.core` or the plugins imports them."""
