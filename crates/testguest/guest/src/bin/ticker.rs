//! Prints the RTC date, then `tick <n>` every `interval_ms` (default 50)
//! until `ticks` ticks (default 0: forever), then powers off. Tests use it
//! to watch a guest make progress: pause must stop the ticks, resume must
//! bring them back, and the date must be the host's.
#![no_std]
#![no_main]

use rt::io::delay_us;

rt::guest!("ticker", main);

fn main() -> ! {
    let t = rt::rtc::now();
    rt::println!(
        "rtc: {:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second
    );
    let interval_us = rt::cmdline::get_u64("interval_ms", 50) * 1000;
    let ticks = rt::cmdline::get_u64("ticks", 0);
    let mut n = 0u64;
    loop {
        n += 1;
        rt::println!("tick {n}");
        if ticks != 0 && n >= ticks {
            rt::power::power_off()
        }
        delay_us(interval_us);
    }
}
