"""The model: tasks, graphs, the builder, statuses, codecs, errors. Pure Python; imports
nothing from ``store``, ``run`` or ``jupyter``, and no notebook library."""
