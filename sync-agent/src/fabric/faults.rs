//! Faults across restarts (issue 14): a fault is identified by its
//! sender's boot id and its number in that boot, per port, so a restarted
//! switch's first fault is heard; and each port's latest fault is retained
//! by the broker (`<prefix>/DEV_FAULT_MSG/<member>/<port>`), so a late
//! joiner or a restarted receiver learns at once which remote ports are
//! down. A switch that comes back reads its own retained faults and
//! corrects those its ports no longer agree with (a port that came up
//! while the agent was down).

use super::{task::Task, wire::Fault};

impl Task {
    /// True when `fault` is new (not a repeat of the last one applied for
    /// its port); repeats are counted as `faults_duplicate`.
    pub(super) fn admit_fault(&mut self, fault: &Fault) -> bool {
        let evicted = self.fault_ledger.evicted();
        let new = self
            .fault_ledger
            .admit(&fault.member, &fault.port, fault.boot, fault.seq);
        let evicted = self.fault_ledger.evicted() - evicted;
        if evicted > 0 {
            self.count_by("fault_ports_evicted", evicted);
        }
        if !new {
            self.count("faults_duplicate");
        }
        new
    }

    /// One of our own faults as the broker retains it: when our port now
    /// says otherwise (it changed while this agent was not running), the
    /// port's current state is published and replaces it.
    pub(super) fn reconcile_own_fault(&mut self, fault: &Fault) {
        if fault.boot == self.boot {
            return;
        }
        let up = self.ports.get(&fault.port).copied().unwrap_or(false);
        let retained_up = fault.kind == "port-up";
        if up != retained_up {
            tracing::info!(
                port = fault.port,
                retained = fault.kind,
                "correcting the fault the broker kept from before this start"
            );
            self.count("faults_corrected");
            self.publish_fault(fault.port.clone(), if up { "port-up" } else { "port-down" });
        }
    }
}
