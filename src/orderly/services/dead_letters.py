"""Operating the dead-letter store: list, show and replay parked messages.

A replay is recorded (who, when) and re-queued through the outbox under the message's own id,
with a ``replay-of`` header naming the replay record. It then goes through the consumer's inbox
like any delivery: if its effect was applied after all, nothing changes, and the replay record
says ``already-applied``; otherwise it is applied (``applied``) or fails again
(``failed-again``, and a new dead letter).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from orderly.services.messaging import H_REPLAY_OF
from orderly.services.ports import Clock, DeadLetter, MessageUnitOfWorkFactory

PARKED = "parked"
REPLAYED = "replayed"


class DeadLetterNotFound(LookupError):
    def __init__(self, letter_id: int) -> None:
        super().__init__(f"no dead letter with id {letter_id}")
        self.letter_id = letter_id


class NotReplayable(ValueError):
    def __init__(self, letter: DeadLetter) -> None:
        super().__init__(f"dead letter {letter.id} was already replayed")
        self.letter = letter


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    letter_id: int
    replay_id: int | None
    message_id: str
    dry_run: bool


class DeadLetterDesk:
    """The operator's view of the dead-letter store (used by the CLI and the admin API)."""

    def __init__(self, uow: MessageUnitOfWorkFactory, clock: Clock) -> None:
        self._uow = uow
        self._clock = clock

    async def letters(
        self,
        *,
        status: str | None = PARKED,
        consumer: str | None = None,
        limit: int = 50,
        after_id: int = 0,
    ) -> list[DeadLetter]:
        async with self._uow() as uow:
            return await uow.dead_letters.list(
                status=status, consumer=consumer, limit=limit, after_id=after_id
            )

    async def show(self, letter_id: int) -> DeadLetter:
        async with self._uow() as uow:
            letter = await uow.dead_letters.get(letter_id)
        if letter is None:
            raise DeadLetterNotFound(letter_id)
        return letter

    async def replay(
        self, letter_id: int, *, requested_by: str, dry_run: bool = False
    ) -> ReplayOutcome:
        """Queue the parked message again; ``dry_run`` only checks that it could be."""
        async with self._uow() as uow:
            letter = await uow.dead_letters.get(letter_id)
            if letter is None:
                raise DeadLetterNotFound(letter_id)
            if letter.status != PARKED:
                raise NotReplayable(letter)
            if dry_run:
                return ReplayOutcome(letter_id, None, letter.message.id, dry_run=True)
            now = self._clock.now()
            replay_id = await uow.dead_letters.start_replay(letter_id, requested_by, now)
            headers = {**letter.message.headers, H_REPLAY_OF: str(replay_id)}
            await uow.outbox.add(replace(letter.message, headers=headers))
            await uow.commit()
        return ReplayOutcome(letter_id, replay_id, letter.message.id, dry_run=False)

    async def replay_all(
        self, *, requested_by: str, consumer: str | None = None, dry_run: bool = False
    ) -> list[ReplayOutcome]:
        """Replay every parked letter (of ``consumer``), oldest first."""
        outcomes: list[ReplayOutcome] = []
        after_id = 0
        while True:
            page = await self.letters(
                status=PARKED, consumer=consumer, limit=200, after_id=after_id
            )
            if not page:
                return outcomes
            for letter in page:
                outcomes.append(
                    await self.replay(letter.id, requested_by=requested_by, dry_run=dry_run)
                )
            after_id = page[-1].id
