"""Checks that a file holds an OTLP/HTTP JSON ExportMetricsServiceRequest, by parsing it
with the OpenTelemetry project's own protobuf classes (unknown fields are errors), and
prints how many metrics and data points it has. Used by crates/server/tests/otel.rs."""
import sys

from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

with open(sys.argv[1], encoding="utf-8") as f:
    request = json_format.Parse(f.read(), ExportMetricsServiceRequest())
metrics = [m for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
points = 0
for m in metrics:
    kind = m.WhichOneof("data")
    points += len(getattr(m, kind).data_points)
print(f"{len(metrics)} metrics, {points} data points")
