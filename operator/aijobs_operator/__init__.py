"""The aijobs operator: one saga per AIImageJob, driven by kopf's watch.

Import name ``aijobs_operator`` (the folder ``operator/`` is deliberately not a package, so the
standard library's ``operator`` is never shadowed).

- :mod:`.saga`: the steps as data, and the pure rules for status, conditions and backoff;
- :mod:`.steps`: what each step does and undoes against the services;
- :mod:`.engine`: the reconciler: a work queue, one pass per job, batched status writes;
- :mod:`.kube`: the few Kubernetes writes the operator makes (status, finalizer, events);
- :mod:`.leader`: a Lease held before kopf starts, so two replicas never both drive a job;
- :mod:`.metrics`, :mod:`.config`, :mod:`.main`.
"""
