//! Integer arithmetic for `define-eval`: `+ - * /`, `^` (power, right-associative), unary
//! minus, parentheses, and dd(1)-style multiplier suffixes on numbers (`c w b kB K MB M GB
//! G`), as fwup's define-eval accepts (docs/fwup.md "define-eval").

/// Evaluate `expr`; `None` on any syntax error or division by zero.
pub fn eval(expr: &str) -> Option<i64> {
    let mut p = P {
        s: expr.as_bytes(),
        i: 0,
        depth: 0,
    };
    let v = p.sum()?;
    p.ws();
    (p.i == p.s.len()).then_some(v)
}

struct P<'a> {
    s: &'a [u8],
    i: usize,
    /// Nesting of parentheses and unary minus: the expression comes from a config file, so
    /// it is bounded rather than allowed to overflow the stack.
    depth: usize,
}

/// Deeper nesting than this is an error (fwup's bison parser stops at 10000).
const MAX_DEPTH: usize = 1000;

impl P<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }
    fn sum(&mut self) -> Option<i64> {
        let mut v = self.product()?;
        while let Some(c @ (b'+' | b'-')) = self.peek() {
            self.i += 1;
            let r = self.product()?;
            v = if c == b'+' {
                v.wrapping_add(r)
            } else {
                v.wrapping_sub(r)
            };
        }
        Some(v)
    }
    fn product(&mut self) -> Option<i64> {
        let mut v = self.unary()?;
        while let Some(c @ (b'*' | b'/')) = self.peek() {
            self.i += 1;
            let r = self.unary()?;
            v = if c == b'*' {
                v.wrapping_mul(r)
            } else {
                v.checked_div(r)?
            };
        }
        Some(v)
    }
    /// Unary minus and `^` share the highest precedence and group to the right.
    fn unary(&mut self) -> Option<i64> {
        if self.peek()? == b'-' {
            self.i += 1;
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return None;
            }
            let v = self.unary()?.wrapping_neg();
            self.depth -= 1;
            return Some(v);
        }
        let base = self.postfix()?;
        if self.peek() == Some(b'^') {
            self.i += 1;
            let e = self.unary()?;
            if !(0..=63).contains(&e) {
                return None;
            }
            return Some((0..e).fold(1i64, |acc, _| acc.wrapping_mul(base)));
        }
        Some(base)
    }
    /// A number or parenthesised expression with any multiplier suffixes.
    fn postfix(&mut self) -> Option<i64> {
        let mut v = match self.peek()? {
            b'(' => {
                self.i += 1;
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return None;
                }
                let v = self.sum()?;
                (self.peek()? == b')').then(|| self.i += 1)?;
                self.depth -= 1;
                v
            }
            _ => self.number()?,
        };
        loop {
            let rest = &self.s[self.i..];
            let (mult, len) = match rest {
                [b'k', b'B', ..] => (1000, 2),
                [b'M', b'B', ..] => (1_000_000, 2),
                [b'G', b'B', ..] => (1_000_000_000, 2),
                [b'c', ..] => (1, 1),
                [b'w', ..] => (2, 1),
                [b'b', ..] => (512, 1),
                [b'K', ..] => (1024, 1),
                [b'M', ..] => (1 << 20, 1),
                [b'G', ..] => (1 << 30, 1),
                _ => break,
            };
            self.i += len;
            v = v.wrapping_mul(mult);
        }
        Some(v)
    }
    /// C `strtoll(s, &end, 0)`: decimal, 0x hex or 0 octal.
    fn number(&mut self) -> Option<i64> {
        let s = &self.s[self.i..];
        let (radix, skip) = if s.len() > 1 && s[0] == b'0' && (s[1] == b'x' || s[1] == b'X') {
            (16, 2)
        } else if s.first() == Some(&b'0') {
            (8, 0)
        } else {
            (10, 0)
        };
        let digits = s[skip..]
            .iter()
            .take_while(|c| (**c as char).is_digit(radix))
            .count();
        if digits == 0 {
            return None;
        }
        let t = std::str::from_utf8(&s[skip..skip + digits]).ok()?;
        self.i += skip + digits;
        i64::from_str_radix(t, radix).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::eval;
    #[test]
    fn arithmetic() {
        assert_eq!(eval("100 * 2 + 5"), Some(205));
        assert_eq!(eval("(1 + 3) * 4 + 100 / 7 - 1"), Some(29));
        assert_eq!(eval("0x10 - 1"), Some(15));
        assert_eq!(eval("-3 + 1"), Some(-2));
        assert_eq!(eval("5 % 2"), None);
        assert_eq!(eval("1 << 2"), None);
        assert_eq!(eval("1 / 0"), None);
        // fwup dies of SIGFPE here: an error instead.
        assert_eq!(eval("-9223372036854775808 / -1"), None);
        // Deep nesting is an error, not a stack overflow.
        assert_eq!(eval(&"(".repeat(100_000)), None);
        assert_eq!(eval(&"-".repeat(100_000)), None);
        assert_eq!(
            eval(&format!("{}1{}", "(".repeat(500), ")".repeat(500))),
            Some(1)
        );
        assert_eq!(eval("2^4"), Some(16));
        assert_eq!(eval("-2^2"), Some(-4));
        assert_eq!(eval("2^3^2"), Some(512));
        assert_eq!(eval("4K + 1b"), Some(4096 + 512));
        assert_eq!(eval("2MB"), Some(2_000_000));
        assert_eq!(eval("1 + (2 * 3 + 4)/5"), Some(3));
    }
}
