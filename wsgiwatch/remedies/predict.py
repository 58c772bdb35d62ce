"""The sidecar's views in, a forecast out: what each remedy proven for this server (or the
shapes asked for) would have done with the traffic just recorded."""

from __future__ import annotations

from collections.abc import Sequence

from wsgiwatch.remedies.catalog import Deployment, remedies_for
from wsgiwatch.remedies.forecast import Forecast, forecast
from wsgiwatch.remedies.model import Shape
from wsgiwatch.remedies.recorded import jobs_from
from wsgiwatch.sidecar.views import RequestView


def predict(
    requests: Sequence[RequestView],
    deployment: Deployment,
    threshold_s: float,
    options: Sequence[tuple[str, Shape]] | None = None,
) -> Forecast:
    """``requests`` from ``/api/requests``, the blocking threshold from ``/api/state``.
    ``options`` (label, shape) replace the proven remedies when given."""
    if options is None:
        options = [(r.flags, r.shape) for r in remedies_for(deployment)]
    return forecast(jobs_from(requests), deployment.shape(), options, threshold_s)
