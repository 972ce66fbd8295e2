//! Integer arithmetic for `define-eval`: `+ - * /`, unary minus and parentheses, as fwup's
//! src/eval_math.c accepts (<https://github.com/fwup-home/fwup/blob/main/src/eval_math.c>).

/// Evaluate `expr`; `None` on any syntax error or division by zero.
pub fn eval(expr: &str) -> Option<i64> {
    let mut p = P {
        s: expr.as_bytes(),
        i: 0,
    };
    let v = p.sum()?;
    p.ws();
    (p.i == p.s.len()).then_some(v)
}

struct P<'a> {
    s: &'a [u8],
    i: usize,
}

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
    fn unary(&mut self) -> Option<i64> {
        match self.peek()? {
            b'-' => {
                self.i += 1;
                Some(self.unary()?.wrapping_neg())
            }
            b'(' => {
                self.i += 1;
                let v = self.sum()?;
                (self.peek()? == b')').then(|| self.i += 1)?;
                Some(v)
            }
            _ => {
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i].is_ascii_alphanumeric() {
                    self.i += 1;
                }
                crate::config::parse_c_int(std::str::from_utf8(&self.s[start..self.i]).ok()?)
            }
        }
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
    }
}
