"""The VM unit's forked step (hostupdate.fork_unit_step) run in this process, for the stand-ins of
systemd that start QEMU (Popen) where the unit's agent execs it: the step the agent forks beside it
runs once the stand-in's QEMU started, with that QEMU as the unit's main process."""


class UnitSteps(object):
    def __init__(self, procs):
        self.procs, self.step, self.why, self.first = procs, None, None, 0

    def fork(self, step):
        """hostupdate.fork_unit_step: the step kept for run_step; the agent's refusal noted."""
        self.step, self.why, self.first = step, None, len(self.procs)

        def refused(why):
            self.why = why
        return refused

    def run_step(self):
        """The step's exit code; 0 when the agent forked none (it ended before QEMU's exec)."""
        step, self.step = self.step, None
        return step(self) if step else 0

    # the unit's main process, as the step sees it (hostupdate._UnitMain)
    def qemu(self):
        return self.procs[self.first] if len(self.procs) > self.first else None

    def refused(self):
        return self.why

    def exited(self):
        q = self.qemu()
        return q is None or q.poll() is not None

    def stop(self):
        q = self.qemu()
        if q:
            q.terminate()
            q.wait()

    def __str__(self):
        q = self.qemu()
        return str(q.pid) if q else "none"
