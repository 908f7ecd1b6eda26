//! A screen in front of the process-wide seccomp filter: a binary search
//! over the calls the filter lists, which answers every other call at once.
//!
//! seccompiler emits a filter as a chain, one link per call it lists, so a
//! call it does not list walks all of them. That costs little when a call
//! is refused (the process dies), but the kernel walks the chain too, once
//! per system call number (~460 here) with interrupts off, each time a
//! thread installs the first filter of its stack: it emulates the filter
//! to cache which calls it always allows. Measured with perf over 500 VM
//! starts (BENCH P4), that was ~0.25 ms of CPU per VM, more than compiling
//! the filter. With the screen in front, an unlisted number costs a dozen
//! steps. The filters each thread adds below it need none: the kernel only
//! emulates those for the calls the first one allows.
//!
//! The screen decides nothing the filter would not: a listed call goes on
//! to the filter (with the arguments it checks), an unlisted one gets the
//! filter's own answer for calls it does not list, and a call made for
//! another architecture goes to the filter, which refuses it as before.

use seccompiler::{sock_filter, BpfProgram};

// Classic BPF opcodes (linux/bpf_common.h), as seccomp takes them.
const LD_W_ABS: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;
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
    /// An instruction of the screen, by index.
    At(usize),
}

struct Insn {
    code: u16,
    k: u32,
    jt: To,
    jf: To,
}

/// `program` with a screen in front that passes the calls in `listed` on
/// to it and answers the others with `unlisted` (the action `program`
/// takes for calls it does not list). Unchanged where the screen's jumps
/// would not fit classic BPF's 8-bit offsets.
pub fn prepend(listed: &[i64], unlisted: u32, program: BpfProgram) -> BpfProgram {
    let ranges = ranges(listed);
    if ranges.is_empty() {
        return program;
    }
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
    search(&ranges, &mut s);
    // The two ends every search leaf jumps to: on to the filter (past the
    // refusal), or the refusal.
    let (filter, refuse) = (s.len(), s.len() + 1);
    let mut out = Vec::with_capacity(s.len() + 2 + program.len());
    for (i, insn) in s.iter().enumerate() {
        let offset = |to: To| -> Option<u8> {
            let target = match to {
                To::Next => i + 1,
                To::Filter => filter,
                To::Refuse => refuse,
                To::At(t) => t,
            };
            u8::try_from(target.checked_sub(i + 1)?).ok()
        };
        let (Some(jt), Some(jf)) = (offset(insn.jt), offset(insn.jf)) else {
            return program;
        };
        out.push(sock_filter {
            code: insn.code,
            jt,
            jf,
            k: insn.k,
        });
    }
    // To the filter: over the refusal.
    out.push(sock_filter {
        code: JMP_JA,
        jt: 0,
        jf: 0,
        k: 1,
    });
    out.push(sock_filter {
        code: RET_K,
        jt: 0,
        jf: 0,
        k: unlisted,
    });
    out.extend(program);
    out
}

/// The numbers in `listed` as sorted, disjoint, maximal ranges.
fn ranges(listed: &[i64]) -> Vec<(u32, u32)> {
    let mut nrs: Vec<u32> = listed
        .iter()
        .filter_map(|&n| u32::try_from(n).ok())
        .collect();
    nrs.sort_unstable();
    nrs.dedup();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for n in nrs {
        match out.last_mut() {
            Some((_, hi)) if *hi + 1 == n => *hi = n,
            _ => out.push((n, n)),
        }
    }
    out
}

/// A binary search over `ranges` (the number loaded): each leaf jumps on
/// to the filter if the number is in its range, else to the refusal.
fn search(ranges: &[(u32, u32)], s: &mut Vec<Insn>) {
    if let [(lo, hi)] = ranges {
        s.push(Insn {
            code: JMP_JGE_K,
            k: *lo,
            jt: To::Next,
            jf: To::Refuse,
        });
        s.push(Insn {
            code: JMP_JGT_K,
            k: *hi,
            jt: To::Refuse,
            jf: To::Filter,
        });
        return;
    }
    let mid = ranges.len() / 2;
    let split = s.len();
    s.push(Insn {
        code: JMP_JGE_K,
        k: ranges[mid].0,
        jt: To::Next, // set below, once the right half's place is known
        jf: To::Next,
    });
    search(&ranges[..mid], s);
    s[split].jt = To::At(s.len());
    search(&ranges[mid..], s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_what_is_listed_and_refuses_the_rest() {
        use crate::confine::tighten::tests::run;
        let listed: Vec<i64> = vec![0, 1, 2, 3, 9, 10, 11, 60, 231, 232, 317, 435, 7];
        // The filter behind it: a mark of its own, to see what reaches it.
        let (filter, refuse) = (0x7fff_0000, 0x8000_0000);
        let program: BpfProgram = vec![sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: filter,
        }];
        let p = prepend(&listed, refuse, program.clone());
        assert!(p.len() > program.len());
        assert!(p.ends_with(&program));
        for nr in 0..1024 {
            let want = match listed.contains(&i64::from(nr)) {
                true => filter,
                false => refuse,
            };
            assert_eq!(run(&p, AUDIT_ARCH_X86_64, nr, &[0; 6]), want, "nr {nr}");
        }
        // Another architecture's call: the filter's to judge.
        assert_eq!(run(&p, 0x4000_0003, 5, &[0; 6]), filter);
    }

    #[test]
    fn ranges_merge() {
        assert_eq!(ranges(&[5, 3, 4, 9, -1, 11, 10]), vec![(3, 5), (9, 11)]);
    }

    #[test]
    fn too_far_to_jump_is_left_alone() {
        // Every other number: 400 ranges, more than 8-bit jumps reach.
        let listed: Vec<i64> = (0..800).step_by(2).collect();
        let program: BpfProgram = vec![sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: 0,
        }];
        assert_eq!(prepend(&listed, 0, program.clone()), program);
    }
}
