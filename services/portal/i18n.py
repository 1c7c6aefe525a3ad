"""Every page in Chinese and English: the language comes from the ``lang`` cookie (the switch), else
the browser's Accept-Language (RFC 9110 §12.5.4), else Chinese.

The negotiation is written here, not taken from a library: with two languages it is a dozen lines
(q-values, a primary-subtag match), and Babel would bring its locale database for that alone.
"""

from __future__ import annotations

LANGUAGES = ("zh", "en")
DEFAULT = "zh"
HTML_LANG = {"zh": "zh-CN", "en": "en"}


def negotiate(accept_language: str | None, cookie: str | None = None) -> str:
    if cookie in LANGUAGES:
        return cookie
    best, best_q = DEFAULT, -1.0
    for position, item in enumerate((accept_language or "")[:500].split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        primary = tag.strip().lower().split("-")[0]
        # ties keep the earlier item: browsers list in order of preference
        if primary in LANGUAGES and 0 < q <= 1 and q > best_q:
            best, best_q = primary, q
    return best


MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "brand": "rdx data exchange",
        "skip": "Skip to content",
        "nav.search": "Search",
        "nav.signin": "Sign in",
        "nav.signout": "Sign out",
        "lang.switch": "中文",
        "lang.other": "zh",
        "signed_in_as": "Signed in as {name} ({role} of {member})",
        "role.association_admin": "association admin",
        "role.member_admin": "member admin",
        "role.analyst": "analyst",
        "role.auditor": "auditor",
        "search.title": "Search listings",
        "search.label": "Search words",
        "search.button": "Search",
        "search.results": "{total} listings",
        "search.none": "No listing matches.",
        "search.filters": "Filters",
        "search.apply": "Apply filters",
        "search.clear": "Clear filters",
        "search.next": "Next page",
        "facet.level": "Level",
        "facet.region": "Region",
        "facet.update_cycle": "Update cycle",
        "facet.provider": "Provider",
        "facet.price_model": "Price model",
        "facet.price_band": "Price band",
        "facet.operation": "Operation",
        "facet.industry": "Industry",
        "facet.tag": "Tag",
        "listing.provider": "Provider",
        "listing.level": "Level",
        "listing.operations": "Operations",
        "listing.price": "Price",
        "listing.quote": "Quote for one job now",
        "listing.quote_none": "No quote available",
        "listing.commitment": "Data commitment (SHA-256 Merkle root)",
        "listing.rows": "Rows",
        "listing.region": "Region",
        "listing.update_cycle": "Update cycle",
        "listing.columns": "Columns",
        "listing.column": "Column",
        "listing.type": "Type",
        "listing.sensitivity": "Sensitivity",
        "listing.description": "Description",
        "listing.versions": "Versions on chain",
        "listing.version": "Version",
        "listing.event": "Event",
        "listing.status": "Status",
        "listing.height": "Height",
        "listing.tx": "Transaction",
        "listing.evidence": "Listed at height {height}, transaction {tx}",
        "listing.may_request": "The policy in force lets you ask for",
        "listing.may_request_none": "The policy in force lets you ask for no operation on this listing.",
        "listing.terms": "Usage terms",
        "price.free": "free",
        "price.fixed": "{amount} credits per job",
        "price.per_record": "{amount} credits per record",
        "price.subscription": "{amount} credits per {days} days",
        "price.dynamic": "{amount} credits per job × demand",
        "credits": "{amount} credits",
        "error.title": "Something went wrong",
        "error.back": "Back to search",
        "error.not_found": "There is no such listing.",
        "error.gateway": "The exchange did not answer; try again in a moment.",
        "error.no_key": "The portal has no gateway access for your member and role yet; ask the association.",
        "error.forbidden": "You may not see this.",
        "error.bad_request": "The request was not understood.",
        "error.signin": "Sign-in failed; please try again.",
        "error.csrf": "The form expired; reload the page and try again.",
        "error.rejected": "The chain refused the transaction.",
        "keys.title": "This browser's signing key",
        "keys.text": "Your member's chain transactions are signed here, in this browser, with a key that cannot be read out of it. Give the public key to the association to register it for your member.",
        "keys.make": "Make a signing key in this browser",
        "keys.public": "Public key",
        "keys.none": "No key in this browser yet.",
        "nav.keys": "Signing key",
        "nav.access": "Access",
        "access.title": "Access requests and grants",
        "access.caption": "Requests and grants where your member is the consumer or the provider",
        "access.none": "No access request or grant yet.",
        "access.asset": "Listing",
        "access.consumer": "Consumer",
        "access.action": "Action",
        "access.approve": "Approve (sign in this browser)",
        "access.approved": "Approved, transaction",
        "request.title": "Ask for access",
        "request.grant": "Request id",
        "request.operation": "Operation",
        "request.purpose": "Purpose",
        "request.max_runs": "Runs",
        "request.submit": "Sign in this browser and send",
        "request.done": "Sent, transaction",
        "request.failed": "Not sent:",
        "signin.title": "Sign in",
        "signin.text": "Sign in with your association account to use the exchange.",
        "signin.button": "Sign in",
        "signedout.title": "Signed out",
        "signedout.text": "You are signed out.",
    },
    "zh": {
        "brand": "rdx 数据交易平台",
        "skip": "跳到正文",
        "nav.search": "搜索",
        "nav.signin": "登录",
        "nav.signout": "退出",
        "lang.switch": "English",
        "lang.other": "en",
        "signed_in_as": "已登录：{name}（{member} 的{role}）",
        "role.association_admin": "协会管理员",
        "role.member_admin": "会员管理员",
        "role.analyst": "分析师",
        "role.auditor": "审计员",
        "search.title": "搜索数据产品",
        "search.label": "搜索词",
        "search.button": "搜索",
        "search.results": "共 {total} 个数据产品",
        "search.none": "没有匹配的数据产品。",
        "search.filters": "筛选",
        "search.apply": "应用筛选",
        "search.clear": "清除筛选",
        "search.next": "下一页",
        "facet.level": "分级",
        "facet.region": "地区",
        "facet.update_cycle": "更新周期",
        "facet.provider": "提供方",
        "facet.price_model": "计价方式",
        "facet.price_band": "价格区间",
        "facet.operation": "计算类型",
        "facet.industry": "行业",
        "facet.tag": "标签",
        "listing.provider": "提供方",
        "listing.level": "分级",
        "listing.operations": "计算类型",
        "listing.price": "价格",
        "listing.quote": "当前单次作业报价",
        "listing.quote_none": "暂无报价",
        "listing.commitment": "数据承诺（SHA-256 默克尔根）",
        "listing.rows": "行数",
        "listing.region": "地区",
        "listing.update_cycle": "更新周期",
        "listing.columns": "字段",
        "listing.column": "字段名",
        "listing.type": "类型",
        "listing.sensitivity": "敏感度",
        "listing.description": "描述",
        "listing.versions": "链上版本",
        "listing.version": "版本",
        "listing.event": "事件",
        "listing.status": "状态",
        "listing.height": "区块高度",
        "listing.tx": "交易",
        "listing.evidence": "于区块高度 {height} 上架，交易 {tx}",
        "listing.may_request": "现行策略允许您申请",
        "listing.may_request_none": "现行策略不允许您对该数据产品申请任何计算。",
        "listing.terms": "使用条款",
        "price.free": "免费",
        "price.fixed": "每次作业 {amount} 积分",
        "price.per_record": "每条记录 {amount} 积分",
        "price.subscription": "每 {days} 天 {amount} 积分",
        "price.dynamic": "每次作业 {amount} 积分 × 需求系数",
        "credits": "{amount} 积分",
        "error.title": "出错了",
        "error.back": "返回搜索",
        "error.not_found": "没有这个数据产品。",
        "error.gateway": "交易平台暂未响应，请稍后再试。",
        "error.no_key": "门户尚未为您的会员和角色配置网关访问权限，请联系协会。",
        "error.forbidden": "您无权查看此内容。",
        "error.bad_request": "无法理解该请求。",
        "error.signin": "登录失败，请重试。",
        "error.csrf": "表单已过期，请刷新页面后重试。",
        "error.rejected": "链拒绝了该交易。",
        "keys.title": "本浏览器的签名密钥",
        "keys.text": "您所在会员的链上交易在本浏览器中签名，密钥无法从浏览器中导出。请将公钥交给协会，为您的会员登记。",
        "keys.make": "在本浏览器中生成签名密钥",
        "keys.public": "公钥",
        "keys.none": "本浏览器中还没有密钥。",
        "nav.keys": "签名密钥",
        "nav.access": "访问授权",
        "access.title": "访问申请与授权",
        "access.caption": "您的会员作为使用方或提供方的申请与授权",
        "access.none": "还没有访问申请或授权。",
        "access.asset": "数据产品",
        "access.consumer": "使用方",
        "access.action": "操作",
        "access.approve": "批准（在本浏览器中签名）",
        "access.approved": "已批准，交易",
        "request.title": "申请访问",
        "request.grant": "申请编号",
        "request.operation": "计算类型",
        "request.purpose": "用途",
        "request.max_runs": "次数",
        "request.submit": "在本浏览器中签名并提交",
        "request.done": "已提交，交易",
        "request.failed": "未提交：",
        "signin.title": "登录",
        "signin.text": "请使用协会账号登录以使用交易平台。",
        "signin.button": "登录",
        "signedout.title": "已退出",
        "signedout.text": "您已退出登录。",
    },
}


def translator(lang: str):
    messages = MESSAGES[lang]

    def t(key: str, **values) -> str:
        text = messages.get(key, key)
        return text.format(**values) if values else text

    return t
