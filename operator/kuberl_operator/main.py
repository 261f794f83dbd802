"""The kopf entry point: startup settings and handler registration only; every handler delegates."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kuberl_operator import handlers
from kuberl_operator.api.rljob import GROUP, PLURAL, VERSION
from kuberl_operator.settings import Settings

RESOURCE: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": PLURAL}
# Read at import: the timer's interval (how often every job is reconciled without events) is fixed at registration.
SETTINGS = Settings.from_env()


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = "kuberl.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kuberl.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kuberl.io", key="last-handled-configuration"
    )
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    # A timer mid-reconcile when its job is deleted: wait for it inline, then re-check often (kopf's default
    # re-check is 60 s, which holds the finalizer, and so `kubectl delete`, for a minute).
    settings.background.instant_exit_timeout = 5.0
    settings.background.cancellation_polling = 2.0
    settings.posting.level = logging.WARNING
    handlers.configure(SETTINGS)


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    if info is not None:
        await handlers.start(info)
    return info


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    await handlers.stop()


@kopf.on.create(**RESOURCE)
@kopf.on.update(**RESOURCE)
@kopf.on.resume(**RESOURCE)
async def on_change(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    await handlers.reconcile(body, logger)


@kopf.on.delete(**RESOURCE, optional=True)  # optional: no finalizer of its own, the daemons already hold one
async def on_delete(body: kopf.Body, **_: Any) -> None:
    handlers.job_deleted(body)


@kopf.timer(**RESOURCE, interval=SETTINGS.resync_seconds, initial_delay=SETTINGS.resync_seconds)
async def on_timer(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    await handlers.reconcile(body, logger)


@kopf.on.event("v1", "pods", labels={"app.kubernetes.io/managed-by": "kuberl-operator"})
async def on_pod(body: kopf.Body, event: kopf.RawEvent, **_: Any) -> None:
    await handlers.pod_changed(body, event.get("type"))


@kopf.daemon(**RESOURCE, cancellation_timeout=10)
async def on_scaler(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
    await handlers.scale_forever(body, stopped)
