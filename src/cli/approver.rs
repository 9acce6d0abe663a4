//! Who may decide: root and the members of the approver group approve,
//! reject and leave notes; the name recorded for them is the caller's
//! (`cli::Caller`). The library's approval workflow takes that name and
//! checks nothing about people: this is the edge where it is checked.

/// Whether the user running this command is root or a member of `group`.
pub fn is_approver(group: &str) -> bool {
    let caller = super::Caller::get();
    if caller.is_root() {
        return true;
    }
    nix::unistd::Group::from_name(group).ok().flatten().is_some_and(|g| caller.in_group(g.gid))
}

/// Only root and members of the approver group may approve or reject.
pub fn may_decide(group: &str) -> anyhow::Result<()> {
    only_approvers(group, "approve or reject")
}

/// Only root and members of the approver group may do `what`; anyone else
/// is told what they may not do and who may.
pub fn only_approvers(group: &str, what: &str) -> anyhow::Result<()> {
    if !is_approver(group) {
        anyhow::bail!(
            "{} may not {what}: only root and members of the group {group:?} may (config key act.approver_group)",
            current_user()
        );
    }
    Ok(())
}

/// The Unix user running this command, recorded as the approver.
pub fn current_user() -> String {
    super::Caller::get().name().to_owned()
}
