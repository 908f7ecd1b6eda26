/* A boot sector for the firmware boot tests: the BIOS loads it at 0x7c00
 * (from a disk's first sector, or as an El Torito no-emulation image from
 * a CD) and jumps to it in real mode with DL = the boot drive. It prints
 *
 *     bootsector: booted from drive 0x<DL>
 *
 * on COM1 (polling the UART itself: a BIOS need not have set it up), then
 * powers the machine off through ACPI PM1a_CNT at port 0x604, where our
 * VMM and QEMU's pc and q35 machines have it: SLP_EN with SLP_TYP 5 (our
 * DSDT's \_S5), then SLP_TYP 0 (QEMU's). It halts if neither worked.
 *
 * Assembled with GNU as, linked at 0x7c00 into a flat binary by
 * crates/testguest/build.rs; 512 bytes with the 0x55 0xaa signature.
 */
        .code16
        .text
        .globl  _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7c00, %sp
        cld
        mov     %dl, drive

        mov     $msg, %si
        call    puts
        mov     drive, %al
        shr     $4, %al
        call    hexdigit
        mov     drive, %al
        call    hexdigit
        mov     $'\n', %al
        call    putc

        mov     $0x604, %dx
        mov     $0x3400, %ax            /* SLP_TYP 5 << 10 | SLP_EN */
        out     %ax, %dx
        mov     $0x2000, %ax            /* SLP_TYP 0 << 10 | SLP_EN */
        out     %ax, %dx
1:      hlt
        jmp     1b

/* Prints the NUL-terminated string at DS:SI. */
puts:
        lodsb
        test    %al, %al
        jz      2f
        call    putc
        jmp     puts
2:      ret

/* Prints the low nibble of AL as a hex digit. */
hexdigit:
        and     $0x0f, %al
        add     $'0', %al
        cmp     $'9', %al
        jbe     putc
        add     $('a' - '9' - 1), %al
        /* fall through */

/* Writes AL to COM1 once its transmitter holding register is empty. */
putc:
        mov     %al, %bl
        mov     $0x3fd, %dx
3:      in      %dx, %al
        test    $0x20, %al
        jz      3b
        mov     $0x3f8, %dx
        mov     %bl, %al
        out     %al, %dx
        ret

msg:    .asciz  "bootsector: booted from drive 0x"
drive:  .byte   0

        .org    510
        .byte   0x55, 0xaa
