//! Shortening a classic BPF seccomp filter without changing what it
//! decides: jumps to unconditional jumps go straight to where those lead,
//! and what no path reaches any more is dropped.
//!
//! seccompiler spends five instructions on a call allowed whatever its
//! arguments (compare, two jumps, the allow and a kill no path takes);
//! this leaves two (compare, allow). The kernel's cost of installing a
//! filter, which every thread of a VM process pays for its own (the kind
//! filters, see `threads`) and which perf put first among the costs of
//! confinement in BENCH P4 (checking it, translating it to eBPF, compiling
//! that), grows with its length.

use seccompiler::{sock_filter, BpfProgram};

const CLASS: u16 = 0x07;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const JA: u16 = 0x05; // BPF_JMP | BPF_JA

/// Where instruction `i` of `p` may go next: (taken, not taken) for a
/// conditional jump, the same twice for one that always goes one way,
/// None for a return. None too where a jump leaves the program.
fn successors(p: &[sock_filter], i: usize) -> Option<(usize, usize)> {
    let insn = &p[i];
    let (t, f) = match insn.code & CLASS {
        RET => return None,
        JMP if insn.code == JA => {
            let t = (i + 1).checked_add(usize::try_from(insn.k).ok()?)?;
            (t, t)
        }
        JMP => (i + 1 + usize::from(insn.jt), i + 1 + usize::from(insn.jf)),
        _ => (i + 1, i + 1),
    };
    (t < p.len() && f < p.len()).then_some((t, f))
}

/// `p` shortened (see the module), or `p` as it is where it does not
/// look as expected (a jump out of the program, a jump that would no
/// longer fit in 8 bits).
pub fn tighten(p: BpfProgram) -> BpfProgram {
    tightened(&p).unwrap_or(p)
}

fn tightened(p: &[sock_filter]) -> Option<BpfProgram> {
    let n = p.len();
    if n == 0 {
        return None;
    }
    // Past unconditional jumps (forward only, so this ends).
    let land = |mut t: usize| -> Option<usize> {
        while p[t].code == JA {
            t = successors(p, t)?.0;
        }
        Some(t)
    };
    // Each instruction's targets, threaded; returns and plain
    // instructions keep theirs.
    let mut targets = Vec::with_capacity(n);
    for i in 0..n {
        targets.push(match successors(p, i) {
            None if p[i].code & CLASS == RET => None,
            None => return None,
            Some((t, f)) if p[i].code & CLASS == JMP => Some((land(t)?, land(f)?)),
            Some(tf) => Some(tf),
        });
    }
    // What is still reached from the first instruction (every jump goes
    // forward: one pass in order).
    let mut reached = vec![false; n];
    reached[0] = true;
    for i in 0..n {
        if !reached[i] {
            continue;
        }
        if let Some((t, f)) = targets[i] {
            reached[t] = true;
            reached[f] = true;
        }
    }
    // New places, and the program with its jumps measured anew.
    let mut at = vec![usize::MAX; n];
    let mut next = 0;
    for i in 0..n {
        if reached[i] {
            at[i] = next;
            next += 1;
        }
    }
    let mut out = Vec::with_capacity(next);
    for i in (0..n).filter(|&i| reached[i]) {
        let mut insn = p[i].clone();
        if let (Some((t, f)), JMP) = (targets[i], insn.code & CLASS) {
            let off = |to: usize| at[to].checked_sub(at[i] + 1);
            if insn.code == JA {
                insn.k = u32::try_from(off(t)?).ok()?;
            } else {
                insn.jt = u8::try_from(off(t)?).ok()?;
                insn.jf = u8::try_from(off(f)?).ok()?;
            }
        } else if let Some((t, _)) = targets[i] {
            // A plain instruction falls through to the next one kept:
            // only if that is where it went.
            if at[t] != at[i] + 1 {
                return None;
            }
        }
        out.push(insn);
    }
    Some(out)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Runs classic BPF as seccomp does, for the instructions seccompiler
    /// and the screen emit, on a call `nr` with `args`.
    pub fn run(p: &[sock_filter], arch: u32, nr: u32, args: &[u64; 6]) -> u32 {
        let word = |k: u32| -> u32 {
            match k {
                0 => nr,
                4 => arch,
                8 | 12 => 0,
                k if (16..64).contains(&k) => {
                    let a = args[((k - 16) / 8) as usize];
                    if k % 8 == 0 {
                        a as u32
                    } else {
                        (a >> 32) as u32
                    }
                }
                _ => panic!("load of {k}"),
            }
        };
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let i = &p[pc];
            pc += 1;
            match i.code {
                0x20 => a = word(i.k),      // ld [k]
                0x54 => a &= i.k,           // and #k
                0x05 => pc += i.k as usize, // ja
                0x06 => return i.k,         // ret #k
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let yes = match i.code {
                        0x15 => a == i.k,
                        0x25 => a > i.k,
                        0x35 => a >= i.k,
                        _ => a & i.k != 0,
                    };
                    pc += usize::from(if yes { i.jt } else { i.jf });
                }
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    /// The argument values worth trying against `p`: those it compares
    /// with, and their neighbours.
    pub fn probes(p: &[sock_filter]) -> Vec<u64> {
        let mut v = vec![0, 1, u64::MAX];
        for i in p {
            let k = u64::from(i.k);
            v.extend([k, k.wrapping_sub(1), k + 1, k << 32, (k << 32) | k]);
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    #[test]
    fn threads_jumps_and_drops_the_dead() {
        // ld nr; jeq 1 ? next : +1; ja +1; ja +2; ret allow; ret kill;
        // ret kill (the chain's end)
        let f = |code, jt, jf, k| sock_filter { code, jt, jf, k };
        let p = vec![
            f(0x20, 0, 0, 0),
            f(0x15, 0, 1, 1),
            f(0x05, 0, 0, 1),
            f(0x05, 0, 0, 2),
            f(0x06, 0, 0, 0x7fff_0000),
            f(0x06, 0, 0, 0x8000_0000),
            f(0x06, 0, 0, 0x8000_0000),
        ];
        let t = tighten(p.clone());
        assert_eq!(
            t,
            vec![
                f(0x20, 0, 0, 0),
                f(0x15, 0, 1, 1),
                f(0x06, 0, 0, 0x7fff_0000),
                f(0x06, 0, 0, 0x8000_0000),
            ]
        );
        for nr in 0..4 {
            assert_eq!(run(&t, 0, nr, &[0; 6]), run(&p, 0, nr, &[0; 6]));
        }
    }

    #[test]
    fn a_jump_out_is_left_alone() {
        let p = vec![sock_filter {
            code: 0x05,
            jt: 0,
            jf: 0,
            k: 5,
        }];
        assert_eq!(tighten(p.clone()), p);
    }
}
