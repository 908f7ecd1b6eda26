//! A screen in front of each seccomp filter: a binary search over the
//! calls the filter's rules list, which allows at once those it allows
//! whatever their arguments, passes on to the filter only those whose
//! arguments it checks, and refuses every other call at once.
//!
//! seccompiler emits a filter as a chain, one link per call it lists, so a
//! call walks the links before its own, and an unlisted call all of them:
//! every system call a VM's thread makes, and the kernel too, which
//! emulates each new filter once per call number the filters below it
//! always allow (the first filter of a stack: ~460 numbers), interrupts
//! off, to cache what it always allows. The kernel also translates and
//! JIT-compiles each filter a thread installs, in time in proportion to
//! its length. Measured with perf over 500 VM starts (BENCH P4), each
//! cost more than compiling the filters. With the screen a call costs a
//! dozen steps, and the filter behind it holds only the calls whose
//! arguments matter: the process-wide filter, with a screen of calls
//! only, took 271 instructions, now 96; a thread kind's takes about as
//! many as its chain alone did (82-143), each split of the search one
//! comparison.
//!
//! The screen decides nothing the rules would not: an allowed call is
//! allowed, a checked call goes on to the filter (with the arguments it
//! checks), an unlisted one gets the filter's own answer for calls it
//! does not list, and a call made for another architecture goes to the
//! filter, which refuses it as before.

use seccompiler::{sock_filter, BpfProgram};

// Classic BPF opcodes (linux/bpf_common.h), as seccomp takes them.
const LD_W_ABS: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
// Offsets in struct seccomp_data.
const NR: u32 = 0;
const ARCH: u32 = 4;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// Where a jump of the screen goes.
#[derive(Clone, Copy)]
enum To {
    /// The next instruction.
    Next,
    /// On to the filter.
    Filter,
    /// The filter's answer for calls it does not list.
    Refuse,
    /// Allowed, whatever the arguments.
    Allow,
    /// An instruction of the screen, by index.
    At(usize),
}

struct Insn {
    code: u16,
    k: u32,
    jt: To,
    jf: To,
}

/// What a range of call numbers gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Allowed at once.
    Allow,
    /// On to the filter, which checks the arguments.
    Filter,
    /// The filter's answer for calls it does not list, at once.
    Refuse,
}

impl Class {
    fn to(self) -> To {
        match self {
            Class::Allow => To::Allow,
            Class::Filter => To::Filter,
            Class::Refuse => To::Refuse,
        }
    }
}

/// The screen to put in front of a filter that lists the calls in
/// `checked` (those it allows for some arguments only): it allows the
/// calls in `allowed` at once, goes on to the filter, which the caller
/// appends, for those in `checked`, and answers all others with
/// `unlisted` (the action the filter takes for calls it does not list).
/// None where its jumps would not fit classic BPF's 8-bit offsets.
pub fn screen(checked: &[i64], allowed: &[i64], unlisted: u32) -> Option<BpfProgram> {
    let segments = segments(checked, allowed);
    let mut s = vec![
        Insn {
            code: LD_W_ABS,
            k: ARCH,
            jt: To::Next,
            jf: To::Next,
        },
        Insn {
            code: JMP_JEQ_K,
            k: AUDIT_ARCH_X86_64,
            jt: To::Next,
            jf: To::Filter,
        },
        Insn {
            code: LD_W_ABS,
            k: NR,
            jt: To::Next,
            jf: To::Next,
        },
    ];
    match search(&segments, &mut s) {
        To::At(_) => {}
        // A single segment (nothing listed): its answer, at once.
        answer => s.push(Insn {
            code: JMP_JA,
            k: 0,
            jt: answer,
            jf: answer,
        }),
    }
    // The three ends every search leaf jumps to: on to the filter (past
    // the two answers), the refusal, the allowance.
    let (filter, refuse, allow) = (s.len(), s.len() + 1, s.len() + 2);
    let mut out = Vec::with_capacity(s.len() + 3);
    for (i, insn) in s.iter().enumerate() {
        let offset = |to: To| -> Option<u8> {
            let target = match to {
                To::Next => i + 1,
                To::Filter => filter,
                To::Refuse => refuse,
                To::Allow => allow,
                To::At(t) => t,
            };
            u8::try_from(target.checked_sub(i + 1)?).ok()
        };
        let (jt, jf) = (offset(insn.jt)?, offset(insn.jf)?);
        out.push(match insn.code {
            // An unconditional jump takes its offset in k.
            JMP_JA => sock_filter {
                code: JMP_JA,
                jt: 0,
                jf: 0,
                k: jt.into(),
            },
            code => sock_filter {
                code,
                jt,
                jf,
                k: insn.k,
            },
        });
    }
    // To the filter: over the two answers.
    out.push(sock_filter {
        code: JMP_JA,
        jt: 0,
        jf: 0,
        k: 2,
    });
    out.push(sock_filter {
        code: RET_K,
        jt: 0,
        jf: 0,
        k: unlisted,
    });
    out.push(sock_filter {
        code: RET_K,
        jt: 0,
        jf: 0,
        k: SECCOMP_RET_ALLOW,
    });
    Some(out)
}

/// Every call number, 0 to 2^32 - 1, as sorted segments (where each
/// starts, and its class) of one class each, the next of another: the
/// numbers in `checked`, those in `allowed` (a number in both is
/// checked), and the rest refused.
fn segments(checked: &[i64], allowed: &[i64]) -> Vec<(u32, Class)> {
    let class = |list: &[i64], c: Class| -> Vec<(u32, Class)> {
        list.iter()
            .filter_map(|&n| u32::try_from(n).ok())
            .map(|n| (n, c))
            .collect()
    };
    let mut nrs = class(checked, Class::Filter);
    nrs.extend(class(allowed, Class::Allow));
    // Checked first where a number is in both: the filter decides.
    nrs.sort_unstable_by_key(|&(n, c)| (n, c == Class::Allow));
    nrs.dedup_by_key(|&mut (n, _)| n);
    let mut out: Vec<(u32, Class)> = vec![(0, Class::Refuse)];
    let mut next = 0u64; // the first number not yet in a segment
    for (n, c) in nrs {
        if u64::from(n) > next && out.last().map(|l| l.1) != Some(Class::Refuse) {
            out.push((next as u32, Class::Refuse));
        }
        match out.last_mut() {
            Some(last) if last.1 == c => {}
            Some(last) if last.0 == n => last.1 = c,
            _ => out.push((n, c)),
        }
        next = u64::from(n) + 1;
    }
    if next <= u64::from(u32::MAX) && out.last().map(|l| l.1) != Some(Class::Refuse) {
        out.push((next as u32, Class::Refuse));
    }
    out
}

/// A binary search over `segments` (the number loaded) by where they
/// start: one comparison per split, the last of each path jumping to its
/// segment's answer. Returns where the search starts (or, for a single
/// segment, its answer, and emits nothing).
fn search(segments: &[(u32, Class)], s: &mut Vec<Insn>) -> To {
    if let [(_, class)] = segments {
        return class.to();
    }
    let mid = segments.len() / 2;
    let at = s.len();
    s.push(Insn {
        code: JMP_JGE_K,
        k: segments[mid].0,
        jt: To::Next, // set below, once both halves are placed
        jf: To::Next,
    });
    let below = search(&segments[..mid], s);
    let above = search(&segments[mid..], s);
    s[at].jt = above;
    s[at].jf = below;
    To::At(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confine::tighten::tests::run;

    /// The filter behind the screen: a mark of its own, to see what
    /// reaches it.
    const FILTER: u32 = 0x0005_0000;
    const REFUSE: u32 = 0x8000_0000;

    /// The screen with the marked filter behind it.
    fn prepend(checked: &[i64], allowed: &[i64], unlisted: u32) -> Option<BpfProgram> {
        let mut p = screen(checked, allowed, unlisted)?;
        p.extend(marked());
        Some(p)
    }

    fn marked() -> BpfProgram {
        vec![sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: FILTER,
        }]
    }

    #[test]
    fn allows_passes_on_and_refuses() {
        let checked: Vec<i64> = vec![9, 10, 16, 60, 231, 317];
        let allowed: Vec<i64> = vec![0, 1, 2, 3, 11, 12, 13, 61, 232, 435, 7, 10];
        let p = prepend(&checked, &allowed, REFUSE).unwrap();
        assert!(p.ends_with(&marked()));
        for nr in 0..1024 {
            let n = i64::from(nr);
            let want = match (checked.contains(&n), allowed.contains(&n)) {
                // Both: the filter decides.
                (true, _) => FILTER,
                (false, true) => SECCOMP_RET_ALLOW,
                (false, false) => REFUSE,
            };
            assert_eq!(run(&p, AUDIT_ARCH_X86_64, nr, &[0; 6]), want, "nr {nr}");
        }
        // Another architecture's call: the filter's to judge.
        assert_eq!(run(&p, 0x4000_0003, 5, &[0; 6]), FILTER);
    }

    #[test]
    fn nothing_listed_is_refused() {
        let p = prepend(&[], &[], REFUSE).unwrap();
        for nr in 0..600 {
            assert_eq!(run(&p, AUDIT_ARCH_X86_64, nr, &[0; 6]), REFUSE);
        }
        assert_eq!(run(&p, 0x4000_0003, 5, &[0; 6]), FILTER);
    }

    #[test]
    fn segments_cover_every_number() {
        assert_eq!(
            segments(&[5, 3, 4, 9, -1], &[6, 7, 10, 11, 4, 0]),
            vec![
                (0, Class::Allow),
                (1, Class::Refuse),
                (3, Class::Filter),
                (6, Class::Allow),
                (8, Class::Refuse),
                (9, Class::Filter),
                (10, Class::Allow),
                (12, Class::Refuse)
            ]
        );
        assert_eq!(segments(&[], &[]), vec![(0, Class::Refuse)]);
        assert_eq!(
            segments(&[], &[u32::MAX.into()]),
            vec![(0, Class::Refuse), (u32::MAX, Class::Allow)]
        );
    }

    #[test]
    fn too_far_to_jump_is_refused() {
        // Every other number: 400 ranges, more than 8-bit jumps reach.
        let listed: Vec<i64> = (0..800).step_by(2).collect();
        assert_eq!(screen(&listed, &[], 0), None);
        assert_eq!(screen(&[], &listed, 0), None);
    }
}
