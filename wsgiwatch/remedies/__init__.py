"""From diagnosis to cure: the remedies proven for each server, and what each would have
done with the traffic just recorded.

:mod:`.catalog` knows the servers (how each decides to accept, the remedies proven on it);
:mod:`.model` is a small queueing model of a pool of workers; :mod:`.recorded` turns the
sidecar's recorded requests into its input; :mod:`.forecast` replays them through today's
configuration (checked against what was measured) and through each remedy.
"""
