"""In-memory twins of the five services, for the deterministic simulator only.

Each twin answers the routes the operator calls with the status codes and bodies its real service
gives (``tests/simulation/test_twins_contract.py`` runs one sequence of calls against a twin and
against the real service on PostgreSQL and compares them), and keeps the real semantics that the
money promise rests on:

- Idempotency-Key: a replay with the same body gets the first answer (4xx included, 5xx never
  stored); the same key with another body is refused with 422 ``idempotency-key-reused``.
- Payment: holds move credits from available to held; capture is final and repeatable; a hold
  past its expiry can't be captured (409 ``hold-expired``, credits returned); releasing a captured
  hold is refused; a balance never goes negative.
- Storage: a put is idempotent by object key; a full disk is 507 with nothing stored.
- AI: one task per job; cancel is idempotent; a task moves only when the simulated worker moves it.

No clock is read and no random number drawn here: time comes from the simulator's clock.
"""

from aijobs_dev.simulation.twins.ai import AITwin, Task
from aijobs_dev.simulation.twins.auth import AuthTwin
from aijobs_dev.simulation.twins.base import Reply, Twin
from aijobs_dev.simulation.twins.main import MainTwin
from aijobs_dev.simulation.twins.payment import Account, Hold, PaymentTwin
from aijobs_dev.simulation.twins.storage import StorageTwin, StoredObject

__all__ = [
    "AITwin",
    "Account",
    "AuthTwin",
    "Hold",
    "MainTwin",
    "PaymentTwin",
    "Reply",
    "StorageTwin",
    "StoredObject",
    "Task",
    "Twin",
]
