"""Category trees that ship with nhl, installed as ``nhlcli.taxonomies`` (data only).

Use :func:`nhlcli.taxonomy.shipped_tree` to load one by name; ``nhl hierarchy list`` lists them.
"""
